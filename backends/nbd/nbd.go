// Package nbd reads and writes disk images served over the Network Block Device
// protocol (qemu-nbd, nbdkit, a hypervisor's backup export) with libnbd.
//
// It registers the URI schemes nbd, nbd+unix, nbds and nbds+unix, whose syntax is
// libnbd's (https://github.com/NetworkBlockDevice/nbd/blob/master/doc/uri.md):
//
//	nbd+unix:///?socket=/run/vm.sock
//	nbd://backup-host:10809/export
//
// The nbds schemes require TLS, authenticated as backends.TLS says (a
// certificate directory or a PSK file); a TLS query on a plain scheme is refused.
//
// Every connection is driven by one goroutine running an event loop over libnbd's
// asynchronous API (see conn.go), so that many goroutines can read or write at once
// without queueing on libnbd's per-handle lock.
package nbd

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"time"

	"libguestfs.org/libnbd"

	"github.com/blockferry/blockferry/backends"
)

func init() {
	backends.Register(openSource, openTarget, "nbd", "nbd+unix", "nbds", "nbds+unix")
}

const (
	// contextAllocation is the standard meta context reporting holes and zeroes.
	contextAllocation = "base:allocation"
	// bitmapContextPrefix names a QEMU dirty bitmap as a meta context.
	bitmapContextPrefix = "qemu:dirty-bitmap:"

	// defaultMaxInFlight bounds the payload bytes a connection has outstanding when
	// the caller sets no bound.
	defaultMaxInFlight = 64 << 20
	// maxReadSize is the largest read sent as one NBD command. Servers commonly
	// cap payloads at 32 MiB, but QEMU's NBD server (qemu-nbd, and libvirt backups
	// through QEMU) allocates a buffer per command, and the more of them it holds
	// at once, the more of them are fresh pages that fault: with 64 MiB of reads in
	// flight per connection, a full backup of make bench's image cost qemu-nbd
	// 5.0-6.5 CPU-s with 512 KiB commands, 2.7-3.8 with 256 KiB and 1.7 with 128
	// KiB. Past the faults, a server's CPU goes to per-command work (qemu-nbd with
	// --aio=threads: a pool thread woken, an eventfd, a reply; about 100 us a
	// command on the bench's VM), so reads use 256 KiB commands, as nbdcopy does,
	// and jobs.DefaultMaxInFlight keeps what the server holds at once small enough
	// not to fault: reading 1 GiB of the bench image cost qemu-nbd 0.85 CPU-s in
	// 128 KiB commands with 64 MiB in flight per connection, 0.81 in 256 KiB ones
	// with 2 MiB, 0.61 with 1 MiB (nbdcopy: 0.62).
	maxReadSize = 256 << 10
	// maxWriteSize is the largest write sent as one NBD command: restoring the
	// bench-serve backup (256 MiB of data) to a writable qemu-nbd cost qemu-nbd
	// 2.2-2.6 CPU-s in 128 KiB commands and 1.0-1.2 in 256 KiB ones, as much as
	// nbdcopy's own copy (1.2; it writes 256 KiB commands), with 1 and 4 MiB no
	// better.
	maxWriteSize = 256 << 10
	// maxStatusWindow bounds one block status query: NBD lengths are 32 bits and a
	// server may spend long on a huge range.
	maxStatusWindow = 1 << 30
	// maxZeroSize bounds one WRITE_ZEROES command (NBD lengths are 32 bits).
	maxZeroSize = 1 << 30
)

// errClosed is returned for requests made after Close or cut short by it.
var errClosed = errors.New("nbd connection closed")

// export is what the server advertised on the first connection; every further
// connection to the same export sees the same.
type export struct {
	uri      string // redacted, for messages
	size     int64
	features features
	maxRead  int64 // largest read to ask for at once
	maxWrite int64 // largest write payload to send at once
	// contexts are the requested meta contexts the server agreed to serve.
	contexts map[string]bool
}

// features are what the server advertised that changes how requests are made.
type features struct {
	// allocation: the server serves base:allocation, so block status tells holes
	// from data; without it every range is data.
	allocation bool
	// zero: WRITE_ZEROES; without it zeroes are written as zero bytes.
	zero bool
	// flush: FLUSH makes writes durable; without it there is nothing to ask for.
	flush bool
	// multiConn: connections to the export see each other's writes and flushes,
	// so a device may open several.
	multiConn bool
	readOnly  bool
}

// Handshake timeouts. A server at its client limit (qemu-nbd -e N) accepts the
// connection but does not negotiate until another client leaves, and a wedged one
// may never answer: without a limit a job would hang there, deaf to cancellation.
const (
	// firstHandshakeTimeout bounds the wait for the connection a device needs.
	firstHandshakeTimeout = 30 * time.Second
	// extraHandshakeTimeout bounds the wait for the optional extra connections of
	// a multi-conn export: jobs sharing an export with a client limit would
	// otherwise each hold some connections and wait for the rest forever.
	extraHandshakeTimeout = 3 * time.Second
)

// errHandshakeTimeout: the server did not finish the handshake in time.
var errHandshakeTimeout = errors.New("no NBD handshake: the server accepted the connection but did not negotiate (is the export at its client limit?)")

// endpoint is an export as every connection to it dials it.
type endpoint struct {
	uri      string
	shown    string   // the URI redacted, for messages
	contexts []string // the meta contexts to ask for
	// tls authenticates the connection, for the TLS schemes; nil for the others.
	tls *backends.TLS
}

// dial opens one connection, asking for the endpoint's meta contexts, and waits at
// most timeout for the handshake, or until ctx ends.
func (ep endpoint) dial(ctx context.Context, timeout time.Duration) (*libnbd.Libnbd, error) {
	shown := ep.shown
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	h, err := libnbd.Create()
	if err != nil {
		return nil, fmt.Errorf("nbd %s: %w", shown, err)
	}
	// libnbd fails a read the server did not fully cover, and fills holes itself,
	// so zeroing each buffer beforehand (which costs as much as the copy out) only
	// guards against server bugs that libnbd already reports.
	if err := h.SetPreadInitialize(false); err != nil {
		h.Close()
		return nil, fmt.Errorf("nbd %s: %w", shown, err)
	}
	if err := ep.applyTLS(h); err != nil {
		h.Close()
		return nil, fmt.Errorf("nbd %s: %w", shown, err)
	}
	for _, name := range ep.contexts {
		if err := h.AddMetaContext(name); err != nil {
			h.Close()
			return nil, fmt.Errorf("nbd %s: request meta context %q: %w", shown, name, err)
		}
	}
	if err := handshake(ctx, h, ep.uri, timeout); err != nil {
		h.Close()
		if tlsFailed(err) {
			return nil, fmt.Errorf("nbd %s: %w (%s): %w", shown, backends.ErrTLS, ep.tlsHint(), err)
		}
		if unreachable(err) {
			return nil, fmt.Errorf("nbd %s: %w: %w", shown, backends.ErrUnreachable, err)
		}
		if notNBD(err) {
			return nil, fmt.Errorf("nbd %s: %w: %w", shown, errNotNBD, err)
		}
		if errors.Is(err, ctx.Err()) {
			return nil, err
		}
		return nil, fmt.Errorf("nbd %s: connect: %w", shown, err)
	}
	return h, nil
}

// handshake connects h to uri and drives the handshake until the connection is
// ready, it fails, ctx ends or timeout passes.
func handshake(ctx context.Context, h *libnbd.Libnbd, uri string, timeout time.Duration) error {
	if err := h.AioConnectUri(uri); err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	for {
		if ready, _ := h.AioIsReady(); ready {
			return nil
		}
		if connecting, _ := h.AioIsConnecting(); !connecting {
			return errors.New("the server closed the connection during the handshake")
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return errHandshakeTimeout
		}
		// One step of the state machine, or 100 ms without one.
		if _, err := h.Poll(100); err != nil {
			return err
		}
	}
}

// unreachable tells a server that is not there (no socket, nothing listening, no
// route, unknown host) from one that is there but refused the handshake.
func unreachable(err error) bool {
	var le *libnbd.LibnbdError
	if !errors.As(err, &le) {
		return false
	}
	switch le.Errno {
	case syscall.ENOENT, syscall.ECONNREFUSED, syscall.EHOSTUNREACH,
		syscall.ENETUNREACH, syscall.EHOSTDOWN, syscall.ETIMEDOUT:
		return true
	case 0:
		// libnbd reports name resolution failures without an errno.
		return strings.Contains(le.Errmsg, "getaddrinfo")
	}
	return false
}

// errNotNBD: what answered is no NBD server. The openers wrap it in
// backends.ErrInvalidSource or ErrInvalidTarget: asking again does not change it.
var errNotNBD = errors.New("the server does not speak NBD")

// errProtocol: the server's reply broke the NBD protocol in a way libnbd lets
// through. Sources wrap it in backends.ErrInvalidSource: the same server answers
// the same way when asked again.
var errProtocol = errors.New("the NBD server broke the protocol")

// notNBD tells a server that answered with something else than the NBD greeting
// (an HTTP or SSH server on the port) from one that failed the handshake.
func notNBD(err error) bool {
	var le *libnbd.LibnbdError
	return errors.As(err, &le) && strings.Contains(le.Errmsg, "expected NBD magic")
}

// inspect reads what the server advertised on h, a connection to ep.
func (ep endpoint) inspect(h *libnbd.Libnbd) (export, error) {
	shown := ep.shown
	e := export{uri: shown, contexts: map[string]bool{}}
	size, err := h.GetSize()
	if err != nil {
		return e, fmt.Errorf("nbd %s: size: %w", shown, err)
	}
	e.size = int64(size)

	// Each flag query fails only on a handle that is not connected, which ConnectUri
	// has just ruled out; a false answer on error is the safe one.
	can := func(f func() (bool, error)) bool {
		ok, err := f()
		return err == nil && ok
	}
	e.features = features{
		zero:      can(h.CanZero),
		flush:     can(h.CanFlush),
		multiConn: can(h.CanMultiConn),
		readOnly:  can(h.IsReadOnly),
	}
	for _, name := range ep.contexts {
		if ok, err := h.CanMetaContext(name); err == nil && ok {
			e.contexts[name] = true
		}
	}
	e.features.allocation = e.contexts[contextAllocation]

	e.maxRead, e.maxWrite = maxReadSize, maxWriteSize
	if m, err := h.GetBlockSize(libnbd.SIZE_MAXIMUM); err == nil && m > 0 {
		e.maxRead, e.maxWrite = min(e.maxRead, int64(m)), min(e.maxWrite, int64(m))
	}
	return e, nil
}

// connections starts the loop of the first connection to ep, which advertised e,
// and returns the pool of a device. When the server says that several connections see each other's writes
// and flushes (multi-conn) and want allows, more connections are opened in the
// background and join the pool as they are ready, so that a device is usable at
// once even when the server makes extra connections wait.
func (ep endpoint) connections(ctx context.Context, first *libnbd.Libnbd, e export, want int, maxInFlight int64) (*pool, error) {
	if !e.features.multiConn || want < 1 {
		want = 1
	}
	if maxInFlight <= 0 {
		maxInFlight = defaultMaxInFlight
	}
	c, err := newConn(first, maxInFlight)
	if err != nil {
		first.Close()
		return nil, fmt.Errorf("nbd %s: %w", e.uri, err)
	}
	p := newPool(c)
	if want > 1 {
		p.grow(ctx, want-1, func(ctx context.Context) (*conn, error) {
			h, err := ep.dial(ctx, extraHandshakeTimeout)
			if err != nil {
				return nil, err
			}
			c, err := newConn(h, maxInFlight)
			if err != nil {
				h.Close()
			}
			return c, err
		})
	}
	return p, nil
}
