package nbd

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"libguestfs.org/libnbd"
)

// Why an event loop: libnbd's synchronous calls (Pread, BlockStatus, ...) and
// h.Poll hold the handle's lock for their whole duration, so goroutines sharing a
// handle would take turns and only one request would ever be in flight. Instead
// one goroutine per connection owns the handle: it takes requests from a queue,
// starts them with the Aio* calls, and waits for the socket with poll(2) next to an
// eventfd that submitters write to when they queue work. Callbacks run on that
// goroutine, inside AioNotifyRead/AioNotifyWrite.

type opKind int

const (
	opRead opKind = iota
	opWrite
	opZero
	opFlush
	opBlockStatus
)

func (k opKind) String() string {
	return [...]string{"read", "write", "zero", "flush", "block status"}[k]
}

// request is one NBD command handed to a connection's loop.
type request struct {
	kind  opKind
	off   uint64
	count uint64 // bytes the command covers
	// buf is the payload, which libnbd uses until the command completes: the
	// submitter's pinned memory (pool.transfer), or C memory.
	buf libnbd.AioBuffer
	// ctx, when set, lets the loop drop the request if it ends before the command
	// is started. Requests without one are always answered.
	ctx context.Context
	// extents collects block status replies by meta context name (see addStatus).
	extents map[string][]uint32
	// broke is how the server's reply to this request broke the protocol. It
	// belongs to the loop goroutine, like extents.
	broke error
	// done receives exactly one result; it is buffered so that the loop never
	// blocks on a submitter that gave up.
	done chan error
	// conn is the connection the request was submitted to.
	conn *conn
}

func newRequest(kind opKind, off, count int64) *request {
	return &request{kind: kind, off: uint64(off), count: uint64(count), done: make(chan error, 1)}
}

// cost is what the request counts against the in-flight bound: its payload.
func (r *request) cost() int64 {
	if r.kind == opRead || r.kind == opWrite {
		return int64(r.count)
	}
	return 0
}

// conn is one NBD connection and the goroutine that drives it.
type conn struct {
	h  *libnbd.Libnbd
	fd int // the socket; libnbd owns it, and closes it when the connection dies
	// sock is a duplicate of fd, ours, for shutting the socket down (cutFor,
	// abort) from any goroutine: once libnbd has closed fd, its number may be
	// another file's. Closed by close, after freed is set.
	sock        int
	wake        int // eventfd that submitters write to
	maxInFlight int64
	// load is the payload queued or in flight, for picking the least busy conn.
	load atomic.Int64

	mu      sync.Mutex
	queue   []*request
	closing bool
	err     error // set once the connection takes no more requests
	// aborted is why abort cut the socket; freed is set once close has freed the
	// handle, after which the socket's number may belong to another file.
	aborted error
	freed   bool

	// inflight and inflightBytes belong to the loop goroutine while it runs and to
	// close after it returned.
	inflight      map[*request]struct{}
	inflightBytes int64
	// stalling counts the commands in flight the stall clock applies to (see
	// stalls); progressed is when one last completed, or was started with none
	// in flight.
	stalling   int
	progressed time.Time
	loopDone   chan struct{}
	// cut is why the connection was cut: a reply broke the protocol. It belongs to
	// the loop goroutine.
	cut error
}

func newConn(h *libnbd.Libnbd, maxInFlight int64) (*conn, error) {
	fd, err := h.AioGetFd()
	if err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	sock, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		_ = unix.Close(sock)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	c := &conn{
		h:           h,
		fd:          fd,
		sock:        sock,
		wake:        wake,
		maxInFlight: maxInFlight,
		inflight:    map[*request]struct{}{},
		loopDone:    make(chan struct{}),
	}
	go c.loop()
	return c, nil
}

// submit queues r; its result arrives on r.done.
func (c *conn) submit(r *request) {
	r.conn = c
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		r.done <- err
		return
	}
	c.queue = append(c.queue, r)
	c.load.Add(r.cost())
	c.mu.Unlock()
	c.notify()
}

// notify wakes the loop. A failed write means the counter is already non-zero, so
// the loop is awake anyway.
func (c *conn) notify() {
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	_, _ = unix.Write(c.wake, one[:])
}

func (c *conn) loop() {
	defer close(c.loopDone)
	var pending []*request // taken from the queue, waiting for in-flight room
	for {
		c.mu.Lock()
		pending = append(pending, c.queue...)
		clear(c.queue)
		c.queue = c.queue[:0]
		closing := c.closing
		c.mu.Unlock()
		if closing {
			// Commands in flight are left to close, whose Shutdown completes them.
			c.stop(pending, errClosed)
			return
		}
		pending = c.start(pending)
		if err := c.wait(); err != nil {
			if cut := c.cutCause(); cut != nil {
				err = fmt.Errorf("connection cut: %w", cut)
			} else {
				err = fmt.Errorf("nbd connection failed: %w", err)
			}
			// libnbd has closed its descriptor; ours would keep the socket open.
			_ = unix.Shutdown(c.sock, unix.SHUT_RDWR)
			c.stop(pending, err)
			return
		}
	}
}

// stop makes the connection refuse requests and fails the ones not started.
func (c *conn) stop(pending []*request, err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	pending = append(pending, c.queue...)
	c.queue = nil
	c.mu.Unlock()
	for _, r := range pending {
		c.finish(r, err)
	}
}

// start starts queued commands in order while the in-flight bound allows; it
// returns the ones still waiting. One command always fits, however large.
func (c *conn) start(pending []*request) []*request {
	i := 0
	for ; i < len(pending); i++ {
		r := pending[i]
		if c.inflightBytes > 0 && c.inflightBytes+r.cost() > c.maxInFlight {
			break
		}
		pending[i] = nil
		if r.ctx != nil && r.ctx.Err() != nil {
			c.finish(r, r.ctx.Err())
			continue
		}
		// Recorded before the Aio call, which may already run the callback.
		c.track(r)
		if err := c.issue(r); err != nil {
			c.untrack(r)
			c.finish(r, fmt.Errorf("nbd %s of %d bytes at offset %d: %w", r.kind, r.count, r.off, err))
		}
	}
	return append(pending[:0], pending[i:]...)
}

// issue hands r to libnbd. When it fails libnbd never calls the completion
// callback.
func (c *conn) issue(r *request) error {
	complete := libnbd.CompletionCallback(func(errno *int) int {
		c.complete(r, *errno)
		return 1 // retire the command: nobody calls AioCommandCompleted
	})
	var err error
	switch r.kind {
	case opRead:
		_, err = c.h.AioPread(r.buf, r.off, &libnbd.AioPreadOptargs{
			CompletionCallbackSet: true, CompletionCallback: complete})
	case opWrite:
		_, err = c.h.AioPwrite(r.buf, r.off, &libnbd.AioPwriteOptargs{
			CompletionCallbackSet: true, CompletionCallback: complete})
	case opZero:
		_, err = c.h.AioZero(r.count, r.off, &libnbd.AioZeroOptargs{
			CompletionCallbackSet: true, CompletionCallback: complete})
	case opFlush:
		_, err = c.h.AioFlush(&libnbd.AioFlushOptargs{
			CompletionCallbackSet: true, CompletionCallback: complete})
	case opBlockStatus:
		r.extents = map[string][]uint32{}
		extent := func(name string, _ uint64, entries []uint32, errno *int) int {
			if err := r.addStatus(name, entries); err != nil {
				c.cutFor(r, err)
				*errno = int(syscall.EPROTO)
				return -1
			}
			return 0
		}
		_, err = c.h.AioBlockStatus(r.count, r.off, extent, &libnbd.AioBlockStatusOptargs{
			CompletionCallbackSet: true, CompletionCallback: complete})
	}
	return err
}

// cutFor cuts the connection because the server's reply to r broke the protocol.
// libnbd takes any number of reply chunks for a command, and a server that never
// sends the last one would have the loop read (and the extent callback copy) for
// ever: shutting the socket down leaves libnbd what is already received, after
// which it finds the connection dead and fails every command in flight.
func (c *conn) cutFor(r *request, err error) {
	if r.broke == nil {
		r.broke = err
	}
	if c.cut == nil {
		c.cut = err
		_ = unix.Shutdown(c.sock, unix.SHUT_RDWR)
	}
}

// abort cuts the connection from any goroutine, for a server that stopped
// answering: libnbd then finds the socket shut down and fails the commands in
// flight at once, where it would otherwise wait for their replies for ever (and
// so would whoever waits for them, and close). Later requests are refused.
func (c *conn) abort(cause error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.freed || c.aborted != nil {
		return
	}
	c.aborted = cause
	_ = unix.Shutdown(c.sock, unix.SHUT_RDWR)
}

func (c *conn) abortCause() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.aborted
}

// cutCause is why the connection was cut, by a broken reply (cutFor) or by
// abort; nil if it was not. For the loop goroutine, which owns c.cut.
func (c *conn) cutCause() error {
	if c.cut != nil {
		return c.cut
	}
	return c.abortCause()
}

// track records r as in flight; untrack forgets it. The stall clock starts
// when the first command it applies to does.
func (c *conn) track(r *request) {
	if stalls(r.kind) {
		if c.stalling == 0 {
			c.progressed = time.Now()
		}
		c.stalling++
	}
	c.inflight[r] = struct{}{}
	c.inflightBytes += r.cost()
}

func (c *conn) untrack(r *request) {
	if stalls(r.kind) {
		c.stalling--
	}
	delete(c.inflight, r)
	c.inflightBytes -= r.cost()
}

// complete runs in a completion callback, or when close gives up on a command.
func (c *conn) complete(r *request, errno int) {
	if _, ok := c.inflight[r]; !ok {
		return
	}
	c.untrack(r)
	c.progressed = time.Now()
	var cause error
	switch cut := c.cutCause(); {
	case r.broke != nil:
		cause = r.broke
	case errno != 0 && cut != nil:
		cause = fmt.Errorf("connection cut: %w", cut)
	case errno != 0:
		cause = syscall.Errno(errno)
	}
	var err error
	if cause != nil {
		err = fmt.Errorf("nbd %s of %d bytes at offset %d: %w", r.kind, r.count, r.off, cause)
	}
	c.finish(r, err)
}

func (c *conn) finish(r *request, err error) {
	c.load.Add(-r.cost())
	r.done <- err
}

// wait blocks until the socket is ready in the direction libnbd wants or a
// submitter wakes the loop, and lets libnbd make progress.
func (c *conn) wait() error {
	if dead, _ := c.h.AioIsDead(); dead {
		return errors.New("connection is dead")
	}
	if closed, _ := c.h.AioIsClosed(); closed {
		return errors.New("server closed the connection")
	}
	dir, _ := c.h.AioGetDirection()
	var events int16
	if uint32(dir)&libnbd.AIO_DIRECTION_READ != 0 {
		events |= unix.POLLIN
	}
	if uint32(dir)&libnbd.AIO_DIRECTION_WRITE != 0 {
		events |= unix.POLLOUT
	}
	fds := []unix.PollFd{
		{Fd: int32(c.wake), Events: unix.POLLIN},
		{Fd: int32(c.fd), Events: events},
	}
	if events == 0 {
		fds = fds[:1]
	}
	if err := c.poll(fds); err != nil {
		return err
	}
	if fds[0].Revents&unix.POLLIN != 0 {
		var buf [8]byte
		_, _ = unix.Read(c.wake, buf[:]) // resets the counter
	}
	if len(fds) == 1 {
		return nil
	}
	// Like nbd_poll: a hang-up or error is found out by reading (or writing), which
	// moves libnbd to its dead state and fails the commands in flight.
	re := fds[1].Revents
	switch {
	case events&unix.POLLIN != 0 && re&(unix.POLLIN|unix.POLLHUP|unix.POLLERR) != 0:
		return c.h.AioNotifyRead()
	case events&unix.POLLOUT != 0 && re&(unix.POLLOUT|unix.POLLHUP|unix.POLLERR) != 0:
		return c.h.AioNotifyWrite()
	case re&unix.POLLNVAL != 0:
		return errors.New("socket closed unexpectedly")
	}
	return nil
}

// poll waits for fds. With commands in flight it waits no longer than the stall
// clock allows, and cuts the connection when a server has answered none of them
// for stallTimeout: the cut fails them, and the next poll finds the socket shut.
func (c *conn) poll(fds []unix.PollFd) error {
	for {
		timeout := -1
		if c.stalling > 0 && c.abortCause() == nil {
			left := stallTimeout - time.Since(c.progressed)
			if left > 0 {
				timeout = int(left.Milliseconds()) + 1
			} else {
				// The socket is shut down now: the poll below returns at once.
				c.abort(fmt.Errorf("%w for %v", errStalled, stallTimeout))
			}
		}
		n, err := unix.Poll(fds, timeout)
		switch {
		case err == unix.EINTR:
		case err != nil:
			return fmt.Errorf("poll: %w", err)
		case n > 0 || c.stalling == 0:
			return nil
		}
	}
}

// stallTimeout is how long a server may leave every command in flight
// unanswered before its connection is cut, whether or not anybody gave up on
// them: a wedged export, or a dead host behind a live socket, would otherwise
// hold a job (and its worker's slot) until somebody cancels it. Reads and writes
// are at most 256 KiB, which a working server answers in milliseconds; flushes
// and zeroes are left to take their time (see stalls). The error is a timeout,
// so the attempt ends and the job is retried. A variable for tests.
var stallTimeout = 2 * time.Minute

// errStalled is why a connection was cut when its server stalled.
var errStalled = fmt.Errorf("%w: the server answered no command in flight", os.ErrDeadlineExceeded)

// stalls reports whether the stall clock applies to commands of kind k: reads,
// writes and block status requests. A flush may legitimately take minutes to
// write a server's cache back to slow storage, and a zero of up to 1 GiB as
// long on a device that cannot zero fast.
func stalls(k opKind) bool { return k != opFlush && k != opZero }

// close stops the loop, waits for the commands in flight, disconnects and frees
// the handle. It must be called once.
func (c *conn) close() error {
	c.mu.Lock()
	c.closing = true
	failed := c.err
	c.mu.Unlock()
	c.notify()
	<-c.loopDone

	// This goroutine owns the handle now. Shutdown sends the commands still queued
	// in libnbd, waits for all replies (running their callbacks here) and
	// disconnects; on a dead handle it returns at once. A server that does not
	// answer within abandonGrace has the socket cut under it.
	giveUp := time.AfterFunc(abandonGrace, func() { c.abort(errNoAnswer) })
	err := c.h.Shutdown(nil)
	giveUp.Stop()
	c.mu.Lock()
	c.freed = true
	c.mu.Unlock()
	_ = unix.Close(c.sock)
	c.h.Close()
	// Commands libnbd dropped without a callback; their buffers are no longer used.
	for r := range c.inflight {
		c.untrack(r)
		c.finish(r, errClosed)
	}
	_ = unix.Close(c.wake)
	if err != nil && failed == nil {
		return fmt.Errorf("nbd disconnect: %w", err)
	}
	return nil
}
