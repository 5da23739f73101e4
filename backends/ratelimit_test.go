package backends_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/blockferry/blockferry/backends"
)

// zeroSource reads as zeroes and counts its reads.
type zeroSource struct {
	backends.Source
	reads int
}

func (s *zeroSource) ReadAt(_ context.Context, p []byte, _ int64) (int, error) {
	s.reads++
	clear(p)
	return len(p), nil
}

// TestRateLimitedWaitEndsWithTheRead: a read waiting for the limiter stops when its
// own context ends, and never reaches the source.
func TestRateLimitedWaitEndsWithTheRead(t *testing.T) {
	inner := &zeroSource{}
	l := backends.NewLimiter(1 << 20) // 1 MiB/s, a burst of 1 MiB
	src := backends.RateLimited(inner, l)
	buf := make([]byte, 1<<20)
	if _, err := src.ReadAt(context.Background(), buf, 0); err != nil { // takes the burst
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	start := time.Now()
	_, err := src.ReadAt(ctx, buf, 0) // would wait a second
	if !errors.Is(err, context.Canceled) {
		t.Errorf("read past the rate, cancelled after 50ms: %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Errorf("the read waited %v", d)
	}
	if inner.reads != 1 {
		t.Errorf("the source saw %d reads, want 1", inner.reads)
	}
}
