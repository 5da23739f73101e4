// Package safe runs the goroutines of a job so that a panic in one of them fails
// that job with an error instead of taking the process, and every job beside it,
// down. A worker recovers panics in a job's own goroutine; the goroutines a job
// starts need this, since recover only works in the goroutine that panics.
package safe

import (
	"errors"
	"fmt"
	"runtime/debug"

	"golang.org/x/sync/errgroup"
)

// ErrPanic: code panicked while it ran a job. A retry runs the same code on the
// same input, so it is permanent.
var ErrPanic = errors.New("panic")

// Go runs f in g like g.Go, turning a panic in f into an error that wraps
// ErrPanic and carries the panic's value and stack.
func Go(g *errgroup.Group, f func() error) {
	g.Go(func() error { return Call(f) })
}

// Call calls f, turning a panic in it into an error as Go does.
func Call(f func() error) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("%w: %v\n%s", ErrPanic, v, debug.Stack())
		}
	}()
	return f()
}
