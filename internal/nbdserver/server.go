// Package nbdserver serves a block device over NBD: the fixed newstyle handshake
// (NBD_OPT_GO, INFO, LIST, ABORT, EXPORT_NAME, STRUCTURED_REPLY, LIST and
// SET_META_CONTEXT), structured replies, base:allocation block status and
// multi-conn for read-only exports. Every length a client sends is bounded before
// anything is allocated for it.
//
// No Go NBD server library serves structured replies and block status (the
// well-known ones, such as pojntfx/go-nbd, stop at simple replies), so the server
// side is implemented here; its conformance is tested with libnbd's nbdinfo and
// nbdcopy and with qemu-img.
package nbdserver

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Device is what an export serves. ReadAt fills p with the bytes at off; the
// server never asks for bytes past Size.
type Device interface {
	Size() int64
	ReadAt(ctx context.Context, p []byte, off int64) error
}

// Extent is a run of a device that shares its base:allocation state: Flags is a
// combination of StateHole and StateZero (0: data).
type Extent struct {
	Length int64
	Flags  uint32
}

// ExtentLister is implemented by devices that know which ranges read as zeroes;
// their exports answer base:allocation block status. Extents describes the range
// from off on, covering at least one byte and at most length bytes, in at most
// limit extents (at least 1): a device stops there, since a client asking for
// 4 GiB of 4 KiB runs must not make it build a million of them.
type ExtentLister interface {
	Extents(ctx context.Context, off, length int64, limit int) ([]Extent, error)
}

// Lender is implemented by devices that can lend the bytes of a range instead
// of copying them: Lend returns slices that together hold the n bytes at off,
// valid until release is called, which the server does once it has sent them.
//
// A lend keeps whole units of LendUnit bytes in memory (a backup device's chunk
// positions): every unit the range touches, from offset k*LendUnit on, until
// release. The server charges each connection for the units its replies hold,
// and copies small reads instead of lending them, so that a client that reads
// no replies holds a bounded number of units.
type Lender interface {
	Lend(ctx context.Context, off, n int64) (slices [][]byte, release func(), err error)
	LendUnit() int64
}

// Writer is implemented by writable devices; other exports are read-only.
// WriteAt must not keep p: the server reuses it.
type Writer interface {
	WriteAt(ctx context.Context, p []byte, off int64) error
	Zero(ctx context.Context, off, length int64) error
	Flush(ctx context.Context) error
}

// Bounds on what clients may ask for.
const (
	// MaxRequest is the largest READ or WRITE the server takes (advertised as the
	// maximum block size); a larger WRITE closes the connection, since its payload
	// cannot be skipped safely.
	MaxRequest = 32 << 20
	// maxOptionLength bounds an option's data in the handshake: export names and
	// meta context queries are strings of at most 4096 bytes.
	maxOptionLength = 64 << 10
	// maxOptions bounds the options of one handshake.
	maxOptions = 128
	// maxInFlightBytes bounds the memory the requests of one connection hold
	// until they are answered (at least MaxRequest): request and reply buffers,
	// block status replies and the lend units of lent reads. Past it the server
	// stops reading requests until earlier ones are answered; a device whose
	// lend unit is large raises it to what one READ can hold (lendBudget).
	maxInFlightBytes = 64 << 20
	// maxInFlightRequests bounds the requests of one connection in progress
	// (each is a goroutine): qemu keeps 16 in flight, nbdcopy 64, Linux's nbd
	// driver 128.
	maxInFlightRequests = 256
	// minLentRead is the smallest READ lent rather than copied: a smaller read
	// would hold a whole lend unit (4-64 MiB) for a few bytes, and copying it
	// costs less than the unit it would hold. Sequential readers (nbdcopy reads
	// 256 KiB at a time) are lent.
	minLentRead = 128 << 10
	// maxBlockStatusExtents bounds the descriptors of one block status reply.
	maxBlockStatusExtents = 1 << 16
)

// Timeouts of the transmission phase, by default.
const (
	// DefaultIdleTimeout is how long a connection may send no request while
	// none of its requests is in progress. Idle clients are legitimate (a VM
	// whose reads its page cache answers, a mounted file system), so it is long:
	// it frees the slots of clients that vanished without closing (a crashed
	// host, a cut network).
	DefaultIdleTimeout = time.Hour
	// DefaultReplyTimeout is how long a client may take to receive one reply
	// (at most MaxRequest bytes): a client that stops reading its replies would
	// otherwise hold its slot, and what its requests hold, for ever.
	DefaultReplyTimeout = time.Minute
)

type config struct {
	name           string
	log            *zap.Logger
	maxConns       int
	preferredBlock uint32
	tls            *tls.Config
	idleTimeout    time.Duration
	replyTimeout   time.Duration
}

// Option configures a Server.
type Option func(*config)

// WithExportName sets the name of the export (default ""). Clients asking for the
// default export ("") get it too.
func WithExportName(name string) Option { return func(c *config) { c.name = name } }

// WithLogger sets the logger for connections and failed requests.
func WithLogger(l *zap.Logger) Option { return func(c *config) { c.log = l } }

// WithMaxConnections bounds the clients served at once (default 16); further
// connections are closed at once.
func WithMaxConnections(n int) Option { return func(c *config) { c.maxConns = n } }

// WithPreferredBlockSize sets the block size clients are told to prefer (a power of
// two, default 4096; capped at MaxRequest).
func WithPreferredBlockSize(n uint32) Option { return func(c *config) { c.preferredBlock = n } }

// WithTLS requires clients to start TLS (NBD_OPT_STARTTLS) before anything else:
// options other than STARTTLS and ABORT are refused with NBD_REP_ERR_TLS_REQD.
// cfg's ClientAuth and ClientCAs decide whether clients need certificates; a
// client whose TLS handshake fails is logged as a warning and disconnected.
func WithTLS(cfg *tls.Config) Option { return func(c *config) { c.tls = cfg } }

// WithIdleTimeout sets how long a client may send no request while it has none
// in progress before its connection is closed (default DefaultIdleTimeout;
// 0: no limit).
func WithIdleTimeout(d time.Duration) Option {
	return func(c *config) { c.idleTimeout = max(d, 0) }
}

// WithReplyTimeout sets how long a client may take to receive one reply before
// its connection is closed (default DefaultReplyTimeout; 0: no limit).
func WithReplyTimeout(d time.Duration) Option {
	return func(c *config) { c.replyTimeout = max(d, 0) }
}

// Server serves one device as one export.
type Server struct {
	dev    Device
	ext    ExtentLister // nil: no block status
	writer Writer       // nil: read-only
	lender Lender       // nil: reads copy into a buffer
	cfg    config
}

// New returns a server of dev. The export is writable when dev implements Writer
// and answers block status when it implements ExtentLister.
func New(dev Device, opts ...Option) *Server {
	cfg := config{log: zap.NewNop(), maxConns: 16, preferredBlock: 4096,
		idleTimeout: DefaultIdleTimeout, replyTimeout: DefaultReplyTimeout}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.preferredBlock == 0 || cfg.preferredBlock&(cfg.preferredBlock-1) != 0 || cfg.preferredBlock > MaxRequest {
		cfg.preferredBlock = 4096
	}
	s := &Server{dev: dev, cfg: cfg}
	s.ext, _ = dev.(ExtentLister)
	s.writer, _ = dev.(Writer)
	// A unit larger than a connection's budget is not lent: one READ could
	// hold two of them.
	if l, ok := dev.(Lender); ok && l.LendUnit() > 0 && l.LendUnit() <= maxInFlightBytes {
		s.lender = l
	}
	return s
}

// transmissionFlags are the export's flags: read-only exports advertise
// multi-conn, since every connection sees the same unchanging bytes; a writable
// one flushes and zeroes, and advertises multi-conn too because its writes land
// in one shared device whose Flush covers every connection's writes.
func (s *Server) transmissionFlags() uint16 {
	f := uint16(txHasFlags | txCanMultiConn | txSendDF)
	if s.writer == nil {
		return f | txReadOnly
	}
	return f | txSendFlush | txSendFUA | txWriteZeroes | txSendTrim
}

// Serve accepts connections on l until ctx ends or l fails, then closes l and
// every connection and waits for their requests to end. It returns nil when ctx
// ended it.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	go func() { <-ctx.Done(); l.Close() }()
	slots := make(chan struct{}, s.cfg.maxConns)
	for {
		conn, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("accept: %w", err)
		}
		select {
		case slots <- struct{}{}:
		default:
			s.cfg.log.Warn("nbd connection refused: too many clients", zap.Int("max", s.cfg.maxConns))
			conn.Close()
			continue
		}
		wg.Go(func() {
			defer func() { <-slots }()
			s.serveConn(ctx, conn)
		})
	}
}

// serveConn runs one client: the handshake, then requests until it disconnects.
func (s *Server) serveConn(ctx context.Context, conn net.Conn) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	defer conn.Close()
	log := s.cfg.log.With(zap.String("client", conn.RemoteAddr().String()))
	c := &connection{srv: s, conn: conn, log: log}
	if err := c.handshake(); err != nil {
		switch {
		case errors.Is(err, errTLSRefused):
			log.Warn("nbd client refused", zap.Error(err))
		case !errors.Is(err, errClientLeft):
			log.Info("nbd handshake ended", zap.Error(err))
		}
		return
	}
	log.Debug("nbd client connected", zap.Bool("structured", c.structured), zap.Bool("block_status", c.metaAllocation))
	if err := c.transmit(ctx); err != nil && ctx.Err() == nil {
		log.Info("nbd connection ended", zap.Error(err))
	}
}
