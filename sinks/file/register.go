package file

import (
	"context"
	"net/url"

	"github.com/blockferry/blockferry/sinks"
)

func init() {
	sinks.RegisterStore("file", func(ctx context.Context, u *url.URL) (sinks.Store, error) {
		return OpenURL(ctx, u)
	})
}
