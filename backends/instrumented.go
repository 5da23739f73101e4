package backends

import (
	"context"
	"io"
	"time"
)

// SourceObserver is told the operation, duration and outcome of every request.
type SourceObserver func(op string, d time.Duration, err error)

// Instrumented wraps src so that every read and block status request is reported
// to observe, for metrics.
func Instrumented(src Source, observe SourceObserver) Source {
	if observe == nil {
		return src
	}
	return &instrumentedSource{Source: src, observe: observe}
}

type instrumentedSource struct {
	Source
	observe SourceObserver
}

func (s *instrumentedSource) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	start := time.Now()
	n, err := s.Source.ReadAt(ctx, p, off)
	if err == io.EOF && n == len(p) {
		err = nil
	}
	s.observe("read", time.Since(start), err)
	return n, err
}

func (s *instrumentedSource) Extents(ctx context.Context, start, length int64) ([]Extent, error) {
	t := time.Now()
	e, err := s.Source.Extents(ctx, start, length)
	s.observe("block_status", time.Since(t), err)
	return e, err
}
