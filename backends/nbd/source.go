package nbd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"sync"

	"github.com/blockferry/blockferry/backends"
)

// source is an NBD export opened for backup.
type source struct {
	exp    export
	pool   *pool
	bitmap string // meta context name of the dirty bitmap, or ""

	closeOnce sync.Once
	closeErr  error
}

func openSource(ctx context.Context, u *url.URL, o backends.SourceOptions) (backends.Source, error) {
	ep, err := newEndpoint(u, o.TLS, backends.ErrInvalidSource)
	if err != nil {
		return nil, err
	}
	ep.contexts = []string{contextAllocation}
	bitmap := ""
	if o.Bitmap != "" {
		bitmap = bitmapContextPrefix + o.Bitmap
		ep.contexts = append(ep.contexts, bitmap)
	}
	h, err := ep.dial(ctx, firstHandshakeTimeout)
	if errors.Is(err, errNotNBD) {
		return nil, fmt.Errorf("%w: %w", backends.ErrInvalidSource, err)
	}
	if err != nil {
		return nil, err
	}
	e, err := ep.inspect(h)
	if err != nil {
		h.Close()
		return nil, err
	}
	if bitmap != "" && !e.contexts[bitmap] {
		h.Close()
		return nil, fmt.Errorf("nbd %s: export has no dirty bitmap %q: %w", ep.shown, o.Bitmap, backends.ErrNoBitmap)
	}
	p, err := ep.connections(ctx, h, e, o.Connections, o.MaxInFlight)
	if err != nil {
		return nil, err
	}
	return &source{exp: e, pool: p, bitmap: bitmap}, nil
}

func (s *source) Size() int64 { return s.exp.size }

// ReadAt reads p in commands of at most the read size, spread over the
// connections. libnbd reads the replies straight into p, which stays pinned until
// every command is answered: no C buffer, no copy. Reading past the end returns
// what the image holds and io.EOF. When ctx ends, the commands not yet sent are
// dropped.
func (s *source) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("nbd %s: read at negative offset %d", s.exp.uri, off)
	}
	var eof error
	if int64(len(p)) > s.exp.size-off {
		p = p[:max(0, s.exp.size-off)]
		eof = io.EOF
	}
	n, err := s.pool.transfer(ctx, opRead, p, off, s.exp.maxRead)
	if err != nil {
		if err == ctx.Err() {
			return n, err
		}
		return n, s.failed(err)
	}
	return n, eof
}

// Extents asks the server for block status over at most maxStatusWindow bytes and
// merges allocation with the dirty bitmap. A window past the end yields nothing.
func (s *source) Extents(ctx context.Context, start, length int64) ([]backends.Extent, error) {
	if start < 0 {
		return nil, fmt.Errorf("nbd %s: extents at negative offset %d", s.exp.uri, start)
	}
	length = min(length, maxStatusWindow, s.exp.size-start)
	if length <= 0 {
		return nil, nil
	}
	if !s.exp.features.allocation && s.bitmap == "" {
		// Nothing to ask: every byte is data, and dirty for a full backup.
		return []backends.Extent{{Start: start, Length: length, Dirty: true}}, nil
	}
	r := newRequest(opBlockStatus, start, length)
	r.ctx = ctx
	s.pool.submit(r)
	if err := await(ctx, []*request{r}); err != nil {
		if err == ctx.Err() {
			return nil, err
		}
		return nil, s.failed(err)
	}
	// Receiving from r.done orders the callback's writes to r.extents before this.
	var alloc, bitmap []uint32
	if s.exp.features.allocation {
		alloc = r.extents[contextAllocation]
		if alloc == nil {
			alloc = []uint32{} // a missing reply is an error, not "not in use"
		}
	}
	if s.bitmap != "" {
		bitmap = r.extents[s.bitmap]
		if bitmap == nil {
			bitmap = []uint32{}
		}
	}
	ext, err := mergeExtents(start, length, alloc, bitmap, contextAllocation, s.bitmap)
	if err != nil {
		return nil, s.failed(err)
	}
	return ext, nil
}

// failed names the export in err. A server that broke the protocol makes the
// source invalid: asking again gets the same answer.
func (s *source) failed(err error) error {
	if errors.Is(err, errProtocol) {
		return fmt.Errorf("nbd %s: %w: %w", s.exp.uri, backends.ErrInvalidSource, err)
	}
	return fmt.Errorf("nbd %s: %w", s.exp.uri, err)
}

// Close waits for reads in flight, then disconnects every connection.
func (s *source) Close() error {
	s.closeOnce.Do(func() { s.closeErr = s.pool.close() })
	return s.closeErr
}
