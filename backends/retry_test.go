package backends_test

import (
	"context"
	"errors"
	"io"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/blockferry/blockferry/backends"
)

// flakySource fails its first failures requests with err, then reads as
// 0xab and reports one data extent.
type flakySource struct {
	backends.Source
	failures int32
	err      error
	calls    atomic.Int32
}

func (s *flakySource) fail() error {
	if s.calls.Add(1) <= s.failures {
		return s.err
	}
	return nil
}

func (s *flakySource) ReadAt(_ context.Context, p []byte, _ int64) (int, error) {
	if err := s.fail(); err != nil {
		return 0, err
	}
	for i := range p {
		p[i] = 0xab
	}
	return len(p), nil
}

func (s *flakySource) Extents(_ context.Context, start, length int64) ([]backends.Extent, error) {
	if err := s.fail(); err != nil {
		return nil, err
	}
	return []backends.Extent{{Start: start, Length: length, Dirty: true}}, nil
}

func isEIO(err error) bool { return errors.Is(err, syscall.EIO) }

var fast = backends.WithRetryBackoff(time.Millisecond, 4*time.Millisecond)

func TestRetryingRidesOutTransientErrors(t *testing.T) {
	inner := &flakySource{failures: 3, err: syscall.EIO}
	var notified []int
	src := backends.Retrying(inner, isEIO, fast, backends.WithRetryAttempts(4),
		backends.WithRetryNotify(func(op string, attempt int, _ time.Duration, err error) {
			if op != "read" || !isEIO(err) {
				t.Errorf("notified of %s: %v", op, err)
			}
			notified = append(notified, attempt)
		}))
	buf := make([]byte, 16)
	n, err := src.ReadAt(context.Background(), buf, 0)
	if err != nil || n != len(buf) || buf[15] != 0xab {
		t.Fatalf("read after 3 failures with 4 tries: n=%d err=%v", n, err)
	}
	if got := inner.calls.Load(); got != 4 {
		t.Errorf("the source saw %d reads, want 4", got)
	}
	if len(notified) != 3 || notified[0] != 1 || notified[2] != 3 {
		t.Errorf("retries notified: %v, want [1 2 3]", notified)
	}

	inner = &flakySource{failures: 2, err: syscall.EIO}
	e, err := backends.Retrying(inner, isEIO, fast).Extents(context.Background(), 0, 100)
	if err != nil || len(e) != 1 || inner.calls.Load() != 3 {
		t.Errorf("block status after 2 failures: %v %v, %d calls", e, err, inner.calls.Load())
	}
}

func TestRetryingGivesUp(t *testing.T) {
	inner := &flakySource{failures: 100, err: syscall.EIO}
	src := backends.Retrying(inner, isEIO, fast, backends.WithRetryAttempts(3))
	_, err := src.ReadAt(context.Background(), make([]byte, 8), 0)
	if !errors.Is(err, syscall.EIO) {
		t.Fatalf("read that always fails: %v, want EIO wrapped", err)
	}
	if got := inner.calls.Load(); got != 3 {
		t.Errorf("the source saw %d reads, want 3", got)
	}
}

func TestRetryingDoesNotRetryPermanentErrors(t *testing.T) {
	for _, err := range []error{syscall.EPERM, io.EOF, backends.ErrInvalidSource} {
		inner := &flakySource{failures: 1, err: err}
		_, got := backends.Retrying(inner, isEIO, fast).ReadAt(context.Background(), make([]byte, 8), 0)
		if !errors.Is(got, err) || inner.calls.Load() != 1 {
			t.Errorf("%v: returned %v after %d reads, want it after 1", err, got, inner.calls.Load())
		}
	}
}

func TestRetryingStopsWhenTheContextEnds(t *testing.T) {
	inner := &flakySource{failures: 100, err: syscall.EIO}
	src := backends.Retrying(inner, isEIO, backends.WithRetryBackoff(time.Second, time.Second))
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	start := time.Now()
	_, err := src.ReadAt(ctx, make([]byte, 8), 0)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("read cancelled while waiting to retry: %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Errorf("the read waited %v after its context ended", d)
	}
	if got := inner.calls.Load(); got != 1 {
		t.Errorf("the source saw %d reads, want 1", got)
	}
}
