package backends

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"time"
)

// Retry defaults: five tries of one request, waits of about 0.2, 0.4, 0.8 and
// 1.6 s between them, so a request gives up within a few seconds. What lasts
// longer is the attempt's to retry (the job is redelivered and resumes from its
// checkpoint); what passes in a moment costs one request, not an attempt.
const (
	DefaultRetryAttempts = 5
	DefaultRetryInitial  = 200 * time.Millisecond
	DefaultRetryMax      = 5 * time.Second
)

// RetryOption tunes Retrying.
type RetryOption func(*retryConfig)

type retryConfig struct {
	attempts      int
	initial, most time.Duration
	notify        func(op string, attempt int, wait time.Duration, err error)
}

// WithRetryNotify is told of every failed request that is about to be retried:
// the operation ("read", "block_status"), the try that failed (1 for the first),
// the wait before the next one and the error.
func WithRetryNotify(f func(op string, attempt int, wait time.Duration, err error)) RetryOption {
	return func(c *retryConfig) { c.notify = f }
}

// Retrying wraps src so that a read or a block status request that fails with an
// error retryable calls transient is sent again after an exponential backoff, a
// bounded number of times, as restic's backend retries do. Other errors, io.EOF
// and the end of the request's context end the request at once. When the tries
// run out, the last error is returned, wrapped, for the caller to classify.
//
// The classification is the caller's (package jobs holds the one table of what a
// retry can fix): backends stays independent of it.
func Retrying(src Source, retryable func(error) bool, opts ...RetryOption) Source {
	c := retryConfig{attempts: DefaultRetryAttempts, initial: DefaultRetryInitial, most: DefaultRetryMax}
	for _, o := range opts {
		o(&c)
	}
	if retryable == nil || c.attempts <= 1 {
		return src
	}
	return &retryingSource{Source: src, retryable: retryable, cfg: c}
}

type retryingSource struct {
	Source
	retryable func(error) bool
	cfg       retryConfig
}

func (s *retryingSource) ReadAt(ctx context.Context, p []byte, off int64) (n int, err error) {
	err = s.do(ctx, "read", func() error {
		n, err = s.Source.ReadAt(ctx, p, off)
		return err
	})
	return n, err
}

func (s *retryingSource) Extents(ctx context.Context, start, length int64) (e []Extent, err error) {
	err = s.do(ctx, "block_status", func() error {
		e, err = s.Source.Extents(ctx, start, length)
		return err
	})
	return e, err
}

// do runs req until it succeeds, fails for good, the tries run out or ctx ends.
func (s *retryingSource) do(ctx context.Context, op string, req func() error) error {
	wait := s.cfg.initial
	for attempt := 1; ; attempt++ {
		err := req()
		if err == nil || errors.Is(err, io.EOF) || ctx.Err() != nil || !s.retryable(err) {
			return err
		}
		if attempt == s.cfg.attempts {
			return fmt.Errorf("%w (%s failed %d times)", err, op, attempt)
		}
		d := jitter(wait)
		if s.cfg.notify != nil {
			s.cfg.notify(op, attempt, d, err)
		}
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (waiting to retry after: %w)", ctx.Err(), err)
		case <-t.C:
		}
		wait = min(2*wait, s.cfg.most)
	}
}

// jitter draws a wait in [d/2, d].
func jitter(d time.Duration) time.Duration {
	if d <= 1 {
		return d
	}
	return d/2 + rand.N(d/2+1)
}
