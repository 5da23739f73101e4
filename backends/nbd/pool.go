package nbd

import (
	"context"
	"sync"
	"sync/atomic"

	"libguestfs.org/libnbd"
)

// bufPool recycles the C buffers of reads and writes, all of the export's
// request size. Fresh malloc'd buffers this large are mmap'd, and faulting their
// pages in on every command costs more than the copy through them.
type bufPool struct {
	size uint
	keep int

	mu     sync.Mutex
	free   []libnbd.AioBuffer
	closed bool
}

// newBufPool keeps up to keep buffers of size bytes.
func newBufPool(size int64, keep int) *bufPool {
	return &bufPool{size: uint(size), keep: keep}
}

// get returns a buffer of n bytes, n at most the pool's size.
func (b *bufPool) get(n uint64) libnbd.AioBuffer {
	b.mu.Lock()
	var buf libnbd.AioBuffer
	if k := len(b.free); k > 0 {
		buf = b.free[k-1]
		b.free = b.free[:k-1]
	}
	b.mu.Unlock()
	if buf.P == nil {
		buf = libnbd.MakeAioBuffer(b.size)
	}
	buf.Size = uint(n) // free(3) needs only the pointer
	return buf
}

// put keeps buf for reuse, or frees it when the pool is full or closed. A zero
// buf is ignored.
func (b *bufPool) put(buf libnbd.AioBuffer) {
	if buf.P == nil {
		return
	}
	b.mu.Lock()
	if !b.closed && len(b.free) < b.keep {
		b.free = append(b.free, buf)
		b.mu.Unlock()
		return
	}
	b.mu.Unlock()
	buf.Free()
}

// close frees the buffers kept; buffers put back later are freed at once (a
// reader may still hold one when Close cuts its request short).
func (b *bufPool) close() {
	b.mu.Lock()
	free := b.free
	b.free, b.closed = nil, true
	b.mu.Unlock()
	for _, buf := range free {
		buf.Free()
	}
}

// pool spreads requests over the connections to one export.
type pool struct {
	bufs  *bufPool
	conns []*conn
	next  atomic.Uint32 // rotates the search start so that ties take turns
}

// pick returns the connection with the least payload queued or in flight.
func (p *pool) pick() *conn {
	n := len(p.conns)
	start := int(p.next.Add(1)) % n
	best := p.conns[start]
	bestLoad := best.load.Load()
	for i := 1; i < n && bestLoad > 0; i++ {
		c := p.conns[(start+i)%n]
		if l := c.load.Load(); l < bestLoad {
			best, bestLoad = c, l
		}
	}
	return best
}

// submit hands r to the least busy connection.
func (p *pool) submit(r *request) { p.pick().submit(r) }

// close closes every connection, returning the first error, and frees the buffers.
func (p *pool) close() error {
	var first error
	for _, c := range p.conns {
		if err := c.close(); err != nil && first == nil {
			first = err
		}
	}
	p.bufs.close()
	return first
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
