package s3

import (
	"context"
	"net/url"

	"github.com/blockferry/blockferry/sinks"
)

func init() {
	sinks.RegisterStore("s3", func(ctx context.Context, u *url.URL) (sinks.Store, error) {
		return Open(ctx, u)
	})
}
