package nbd

import (
	"context"
	"errors"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"libguestfs.org/libnbd"
)

// pool spreads requests over the connections to one export.
type pool struct {
	conns atomic.Pointer[[]*conn] // replaced, never modified, when one joins
	next  atomic.Uint32           // rotates the search start so that ties take turns

	mu       sync.Mutex // serializes joining with closing
	closed   bool
	stopGrow context.CancelFunc
	growing  sync.WaitGroup
}

func newPool(first *conn) *pool {
	p := &pool{stopGrow: func() {}}
	p.conns.Store(&[]*conn{first})
	return p
}

// all returns the connections of the pool now.
func (p *pool) all() []*conn { return *p.conns.Load() }

// grow opens up to n more connections with dial, one after the other, in the
// background. It stops at the first that fails (a server that makes extra
// connections wait is at its client limit), when ctx ends or the pool closes.
func (p *pool) grow(ctx context.Context, n int, dial func(context.Context) (*conn, error)) {
	ctx, cancel := context.WithCancel(ctx)
	p.stopGrow = cancel
	p.growing.Add(1)
	go func() {
		defer p.growing.Done()
		defer cancel()
		for range n {
			c, err := dial(ctx)
			if err != nil {
				return
			}
			p.mu.Lock()
			if p.closed {
				p.mu.Unlock()
				_ = c.close()
				return
			}
			conns := append(slices.Clip(p.all()), c)
			p.conns.Store(&conns)
			p.mu.Unlock()
		}
	}()
}

// pick returns the connection with the least payload queued or in flight.
func (p *pool) pick() *conn {
	conns := p.all()
	n := len(conns)
	start := int(p.next.Add(1)) % n
	best := conns[start]
	bestLoad := best.load.Load()
	for i := 1; i < n && bestLoad > 0; i++ {
		c := conns[(start+i)%n]
		if l := c.load.Load(); l < bestLoad {
			best, bestLoad = c, l
		}
	}
	return best
}

// submit hands r to the least busy connection.
func (p *pool) submit(r *request) { p.pick().submit(r) }

// close stops opening connections and closes every connection, returning the
// first error.
func (p *pool) close() error {
	p.stopGrow()
	p.growing.Wait()
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	var first error
	for _, c := range p.all() {
		if err := c.close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// transfer reads into or writes from buf at off, in commands of at most maxRequest
// bytes spread over the connections, and waits for all of them. libnbd works on
// buf itself: a runtime.Pinner keeps it in place while C holds pointers into it,
// and every command is waited for, also after a failure or the end of ctx, so
// that none is left touching buf once transfer returns; when ctx ends, the
// commands not yet started are dropped. It returns the bytes before the first
// failure.
func (p *pool) transfer(ctx context.Context, kind opKind, buf []byte, off, maxRequest int64) (int, error) {
	if len(buf) == 0 {
		return 0, nil
	}
	var pin runtime.Pinner
	pin.Pin(unsafe.SliceData(buf))
	defer pin.Unpin()
	reqs := make([]*request, 0, (int64(len(buf))+maxRequest-1)/maxRequest)
	for done := int64(0); done < int64(len(buf)); done += maxRequest {
		n := min(maxRequest, int64(len(buf))-done)
		r := newRequest(kind, off+done, n)
		r.buf = libnbd.AioBuffer{P: unsafe.Pointer(&buf[done]), Size: uint(n)}
		r.ctx = ctx
		p.submit(r)
		reqs = append(reqs, r)
	}
	return collect(ctx, reqs)
}

// abandonGrace is how long requests whose context ended may still take to be
// answered before their connection is cut (and how long close waits for a
// server's answers). A server that answers nothing for that long has stopped (a
// paused or wedged process, a dead host behind a live socket): without the cut,
// a cancelled job would wait for it for ever. A variable for tests.
var abandonGrace = 5 * time.Second

// errNoAnswer is why a connection was cut when its server stopped answering.
var errNoAnswer = errors.New("the server stopped answering")

// collect waits for every request of a transfer, whose buffer libnbd may use
// until then, and returns the bytes before the first failure. When ctx ends, the
// requests in flight get abandonGrace to be answered; then their connections are
// cut, which fails them at once.
func collect(ctx context.Context, reqs []*request) (int, error) {
	n, failed := 0, error(nil)
	ended := ctx.Done()
	var grace <-chan time.Time
	for i := 0; i < len(reqs); {
		select {
		case err := <-reqs[i].done:
			if err != nil && failed == nil {
				failed = err
			} else if failed == nil {
				n += int(reqs[i].count)
			}
			i++
		case <-ended:
			ended, grace = nil, time.After(abandonGrace)
		case <-grace:
			grace = nil
			for _, r := range reqs[i:] {
				if len(r.done) == 0 { // not answered yet
					r.conn.abort(errNoAnswer)
				}
			}
		}
	}
	if failed != nil && ctx.Err() != nil {
		failed = ctx.Err() // the requests failed because they were abandoned
	}
	return n, failed
}

// await collects the results of reqs and returns the first error. A nil ctx waits
// for all of them; otherwise it returns ctx.Err() as soon as ctx ends, and requests
// still queued are then dropped by their loop.
func await(ctx context.Context, reqs []*request) error {
	var first error
	for _, r := range reqs {
		var err error
		if ctx == nil {
			err = <-r.done
		} else {
			select {
			case err = <-r.done:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if err != nil && first == nil {
			first = err
		}
	}
	return first
}
