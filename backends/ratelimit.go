package backends

import (
	"context"

	"golang.org/x/time/rate"
)

// RateLimited wraps src so that its reads, together with every other reader of the
// same limiter, stay within the limiter's rate in bytes per second. Wrap twice for
// a per-job limit inside a worker-wide one. A read whose context ends stops
// waiting, so a cancelled job does not sit out its wait.
func RateLimited(src Source, l *rate.Limiter) Source {
	if l == nil {
		return src
	}
	return &rateLimitedSource{Source: src, limiter: l}
}

type rateLimitedSource struct {
	Source
	limiter *rate.Limiter
}

func (s *rateLimitedSource) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	// WaitN refuses n above the burst, so large reads wait in burst-sized steps.
	for rest := len(p); rest > 0; {
		n := min(rest, s.limiter.Burst())
		if err := s.limiter.WaitN(ctx, n); err != nil {
			return 0, err
		}
		rest -= n
	}
	return s.Source.ReadAt(ctx, p, off)
}

// NewLimiter makes a limiter of bytesPerSec with a burst of one large request, so
// a limit below the chunk size still lets chunks through at the set pace.
func NewLimiter(bytesPerSec int64) *rate.Limiter {
	if bytesPerSec <= 0 {
		return nil
	}
	return rate.NewLimiter(rate.Limit(bytesPerSec), int(min(max(bytesPerSec, 1<<20), 16<<20)))
}
