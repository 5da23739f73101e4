package s3

import (
	"bytes"
	"context"
	"fmt"
	"net/url"
	"testing"
	"time"

	"github.com/blockferry/blockferry/internal/testutil"
)

// TestRidesOutOutage: the server is killed in the middle of a sequence of Puts
// and started again on the same port after outage, longer than the SDK's own
// retries lasted (3 to 6 s); every Put completes, the one in flight once the
// server is back. TestRetryBudget shows that the retries last over a minute.
func TestRidesOutOutage(t *testing.T) {
	const outage = 8 * time.Second
	srv := testutil.StartS3Server(t)
	testutil.CreateBucket(t, srv.Endpoint, testutil.S3AccessKey, testutil.S3SecretKey, "bkt")
	testutil.S3Env(t, testutil.S3AccessKey, testutil.S3SecretKey)
	s := open(t, "s3://bkt/outage?endpoint="+url.QueryEscape(srv.Endpoint))
	ctx := context.Background()
	data := func(i int) []byte { return bytes.Repeat([]byte{byte(i)}, 64<<10) }

	var restarted chan error
	var stopped time.Time
	for i := range 6 {
		if i == 2 {
			srv.Stop()
			stopped = time.Now()
			restarted = make(chan error, 1)
			time.AfterFunc(outage, func() { restarted <- srv.Start() })
		}
		start := time.Now()
		if err := s.Put(ctx, fmt.Sprintf("obj-%d", i), data(i)); err != nil {
			t.Fatalf("put %d, %v after the server stopped: %v", i, time.Since(stopped), err)
		}
		if i == 2 {
			if err := <-restarted; err != nil {
				t.Fatalf("restarting the server: %v", err)
			}
			if took := time.Since(start); took < outage {
				t.Fatalf("put %d took %v, less than the outage of %v: the server was not down", i, took, outage)
			}
		}
	}
	for i := range 6 {
		got, err := s.Get(ctx, fmt.Sprintf("obj-%d", i), 1<<30)
		if err != nil || !bytes.Equal(got, data(i)) {
			t.Errorf("obj-%d: %d bytes, %v", i, len(got), err)
		}
	}
}
