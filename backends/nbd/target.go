package nbd

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sync"

	"libguestfs.org/libnbd"

	"github.com/blockferry/blockferry/backends"
)

// target is an NBD export opened for restore.
type target struct {
	exp  export
	pool *pool

	// zeroes is a buffer of zero bytes shared by the writes that stand in for
	// WRITE_ZEROES on servers without it. libnbd only reads it, so one buffer serves
	// every such write in flight; it is freed after the connections are closed.
	zeroOnce sync.Once
	zeroes   libnbd.AioBuffer

	closeOnce sync.Once
	closeErr  error
}

func openTarget(ctx context.Context, u *url.URL, o backends.TargetOptions) (backends.Target, error) {
	ep, err := newEndpoint(u, o.TLS, backends.ErrInvalidTarget)
	if err != nil {
		return nil, err
	}
	h, err := ep.dial(ctx, firstHandshakeTimeout)
	if errors.Is(err, errNotNBD) {
		return nil, fmt.Errorf("%w: %w", backends.ErrInvalidTarget, err)
	}
	if err != nil {
		return nil, err
	}
	e, err := ep.inspect(h)
	if err != nil {
		h.Close()
		return nil, err
	}
	if e.features.readOnly {
		h.Close()
		return nil, fmt.Errorf("nbd %s: %w: the export is read-only", ep.shown, backends.ErrInvalidTarget)
	}
	if o.Size > e.size {
		h.Close()
		return nil, fmt.Errorf("nbd %s: export has %d bytes, image needs %d: %w", ep.shown, e.size, o.Size, backends.ErrTooSmall)
	}
	p, err := ep.connections(ctx, h, e, o.Connections, defaultMaxInFlight)
	if err != nil {
		return nil, err
	}
	return &target{exp: e, pool: p}, nil
}

func (t *target) Size() int64 { return t.exp.size }

// check refuses ranges outside the export before the server has to.
func (t *target) check(what string, off, length int64) error {
	if off < 0 || length < 0 || length > t.exp.size-off {
		return fmt.Errorf("nbd %s: %s of %d bytes at offset %d is outside the %d byte export", t.exp.uri, what, length, off, t.exp.size)
	}
	return nil
}

// WriteAt sends p in commands of at most the write size, spread over the
// connections, straight from p (pinned until the server acknowledged them all).
func (t *target) WriteAt(p []byte, off int64) (int, error) {
	if err := t.check("write", off, int64(len(p))); err != nil {
		return 0, err
	}
	// io.WriterAt has no context: a write is always sent.
	n, err := t.pool.transfer(context.Background(), opWrite, p, off, t.exp.maxWrite)
	if err != nil {
		return n, fmt.Errorf("nbd %s: %w", t.exp.uri, err)
	}
	return n, nil
}

// Zero uses WRITE_ZEROES when the server has it (which may punch a hole), and
// otherwise writes zero bytes, a bounded batch at a time.
func (t *target) Zero(ctx context.Context, off, length int64) error {
	if err := t.check("zero", off, length); err != nil {
		return err
	}
	piece, batch := int64(maxZeroSize), int(^uint(0)>>1)
	if !t.exp.features.zero {
		t.zeroOnce.Do(func() { t.zeroes = libnbd.MakeAioBufferZero(uint(t.exp.maxWrite)) })
		piece, batch = t.exp.maxWrite, int(max(1, defaultMaxInFlight/t.exp.maxWrite))
	}
	for done := int64(0); done < length; {
		var reqs []*request
		for ; done < length && len(reqs) < batch; done += piece {
			n := min(piece, length-done)
			var r *request
			if t.exp.features.zero {
				r = newRequest(opZero, off+done, n)
			} else {
				r = newRequest(opWrite, off+done, n)
				r.buf = libnbd.AioBuffer{P: t.zeroes.P, Size: uint(n)}
			}
			r.ctx = ctx
			t.pool.submit(r)
			reqs = append(reqs, r)
		}
		if err := t.await(ctx, reqs); err != nil {
			return err
		}
	}
	return nil
}

// Flush flushes every connection: a server with multi-conn makes one flush cover
// all of them, but asking each costs little and does not depend on it. Without
// flush support there is nothing to ask for.
func (t *target) Flush(ctx context.Context) error {
	if !t.exp.features.flush {
		return nil
	}
	conns := t.pool.all()
	reqs := make([]*request, 0, len(conns))
	for _, c := range conns {
		r := newRequest(opFlush, 0, 0)
		r.ctx = ctx
		c.submit(r)
		reqs = append(reqs, r)
	}
	return t.await(ctx, reqs)
}

// await waits for reqs; a failure names the export, the context's end does not.
func (t *target) await(ctx context.Context, reqs []*request) error {
	if err := await(ctx, reqs); err != nil {
		if err == ctx.Err() {
			return err
		}
		return fmt.Errorf("nbd %s: %w", t.exp.uri, err)
	}
	return nil
}

// Close waits for writes in flight, disconnects, then frees the zero buffer no
// command can use any more. It does not flush.
func (t *target) Close() error {
	t.closeOnce.Do(func() {
		t.closeErr = t.pool.close()
		t.zeroes.Free()
	})
	return t.closeErr
}
