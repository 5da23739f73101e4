package nbdserver

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"net"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"
)

// request is one command of the transmission phase.
type request struct {
	flags   uint16
	typ     uint16
	cookie  uint64
	off     uint64
	length  uint32
	payload []byte // of a WRITE

	inBounds bool  // off and length are within the device
	lent     bool  // a READ answered with the device's lent bytes
	weight   int64 // the bytes it holds until answered, lends aside
}

// transmit reads requests and answers each in a goroutine of its own, so that
// clients can keep many in flight; what they hold is bounded by the
// connection's budget, beyond which the next request waits. A reply the client
// does not take within the reply timeout, or no request within the idle
// timeout while none is in progress, ends the connection.
func (c *connection) transmit(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var unit int64
	if c.srv.lender != nil {
		unit = c.srv.lender.LendUnit()
	}
	b := newBudget(unit)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		req, err := c.nextRequest(b)
		if err != nil || req.typ == cmdDisc {
			return err
		}
		if err := b.admit(ctx, req); err != nil {
			return nil
		}
		if req.typ == cmdWrite {
			req.payload = getBuffer(int(req.length))
			if err := c.readPayload(req.payload); err != nil {
				b.done(req)
				return fmt.Errorf("write payload: %w", err)
			}
		}
		wg.Go(func() {
			defer b.done(req)
			defer putBuffer(req.payload)
			if err := c.handle(ctx, req); err != nil && ctx.Err() == nil {
				c.log.Info("nbd reply failed", zap.Error(err))
				// The device's work for the other requests is of no use now.
				cancel()
				c.conn.Close()
			}
		})
	}
}

// nextRequest reads the next request's header; the client leaving between
// requests is the zero request with cmdDisc.
func (c *connection) nextRequest(b *budget) (request, error) {
	var hdr [28]byte
	if err := c.readHeader(hdr[:], b); err != nil {
		if errors.Is(err, io.EOF) {
			return request{typ: cmdDisc}, nil
		}
		return request{}, err
	}
	if m := binary.BigEndian.Uint32(hdr[0:]); m != magicRequest {
		return request{}, fmt.Errorf("bad request magic %#x", m)
	}
	req := request{
		flags: binary.BigEndian.Uint16(hdr[4:]), typ: binary.BigEndian.Uint16(hdr[6:]),
		cookie: binary.BigEndian.Uint64(hdr[8:]), off: binary.BigEndian.Uint64(hdr[16:]),
		length: binary.BigEndian.Uint32(hdr[24:]),
	}
	if req.typ == cmdWrite && req.length > MaxRequest {
		return request{}, fmt.Errorf("write of %d bytes: more than %d", req.length, MaxRequest)
	}
	size := uint64(c.srv.dev.Size())
	req.inBounds = req.off <= size && uint64(req.length) <= size-req.off
	c.weigh(&req)
	return req, nil
}

// weigh sets what req holds until it is answered: the buffer of a WRITE or of
// a copied READ, the largest block status reply, or 4096 bytes of bookkeeping;
// a READ long enough is lent, and holds its lend units instead (charged by the
// budget, once for all the replies that hold one).
func (c *connection) weigh(req *request) {
	req.weight = 4096
	switch req.typ {
	case cmdRead:
		req.lent = c.srv.lender != nil && req.inBounds && req.length >= minLentRead && req.length <= MaxRequest
		switch {
		case req.lent:
			// What it holds is its units: the budget is just large enough for
			// those of one READ, and nothing besides.
			req.weight = 0
		case req.length <= MaxRequest:
			req.weight = max(req.weight, int64(req.length))
		}
	case cmdWrite:
		req.weight = max(req.weight, int64(req.length))
	case cmdBlockStatus:
		req.weight = blockStatusWeight
	}
}

// blockStatusWeight is what one BLOCK_STATUS holds at most: the extents the
// device lists (16 bytes each) and the reply built from them.
const blockStatusWeight = maxBlockStatusExtents*(16+8) + 64

// readHeader reads a request header, waiting at most the idle timeout for it
// from the moment the last request was answered: while requests are in
// progress the client waits for their replies, and is not idle.
func (c *connection) readHeader(hdr []byte, b *budget) error {
	idle := c.srv.cfg.idleTimeout
	deadline := time.Now().Add(idle)
	for {
		if err := c.readDeadline(deadline); err != nil {
			return err
		}
		n, err := io.ReadFull(c.r, hdr)
		if ne, ok := errors.AsType[net.Error](err); n != 0 || !ok || !ne.Timeout() {
			return err
		}
		switch {
		case b.busy():
			deadline = time.Now().Add(idle)
		case time.Since(b.lastDoneAt()) < idle:
			deadline = b.lastDoneAt().Add(idle)
		default:
			return fmt.Errorf("no request for %v: %w", idle, err)
		}
	}
}

// readPayload reads a WRITE's data, which is to follow its header at once.
func (c *connection) readPayload(p []byte) error {
	if err := c.readDeadline(time.Now().Add(c.srv.cfg.idleTimeout)); err != nil {
		return err
	}
	_, err := io.ReadFull(c.r, p)
	return err
}

// readDeadline sets the deadline of the reads to come: none without an idle
// timeout.
func (c *connection) readDeadline(t time.Time) error {
	if c.srv.cfg.idleTimeout == 0 {
		t = time.Time{}
	}
	return c.conn.SetReadDeadline(t)
}

// handle answers one request; an error is a failure to send the reply.
func (c *connection) handle(ctx context.Context, req request) error {
	s := c.srv
	writable := s.writer != nil
	switch {
	case req.typ == cmdRead:
		return c.read(ctx, req)
	case req.typ == cmdBlockStatus:
		return c.blockStatus(ctx, req)
	case req.typ == cmdFlush:
		if writable {
			return c.simpleReply(req.cookie, c.deviceErrno(req, s.writer.Flush(ctx)))
		}
		return c.simpleReply(req.cookie, 0)
	case req.typ != cmdWrite && req.typ != cmdWriteZeroes && req.typ != cmdTrim:
		return c.simpleReply(req.cookie, errInval)
	case !writable:
		return c.simpleReply(req.cookie, errPerm)
	case !req.inBounds:
		return c.simpleReply(req.cookie, errNoSpc)
	}
	var err error
	switch req.typ {
	case cmdWrite:
		err = s.writer.WriteAt(ctx, req.payload, int64(req.off))
	case cmdWriteZeroes:
		err = s.writer.Zero(ctx, int64(req.off), int64(req.length))
	case cmdTrim:
		// Trimmed ranges read as anything afterwards: keeping the data is correct.
	}
	if err == nil && req.flags&cmdFlagFUA != 0 {
		err = s.writer.Flush(ctx)
	}
	return c.simpleReply(req.cookie, c.deviceErrno(req, err))
}

// deviceErrno turns a device's error into the errno a client gets, logging it:
// a failed request is the client's I/O error and the operator's log line.
func (c *connection) deviceErrno(req request, err error) uint32 {
	if err == nil {
		return 0
	}
	if errors.Is(err, context.Canceled) {
		return errShutdown
	}
	c.log.Error("nbd request failed", zap.Uint16("command", req.typ), zap.Uint64("offset", req.off),
		zap.Uint32("length", req.length), zap.Error(err))
	return errIO
}

func (c *connection) read(ctx context.Context, req request) error {
	switch {
	case req.length > MaxRequest:
		return c.errorReply(req, errOverflow, "read larger than the maximum block size")
	case !req.inBounds || req.length == 0:
		return c.errorReply(req, errInval, "read out of bounds")
	}
	data, release, err := c.readData(ctx, req)
	if errno := c.deviceErrno(req, err); errno != 0 {
		return c.errorReply(req, errno, "read failed")
	}
	defer release()
	if !c.structured {
		return c.send(simpleHeader(req.cookie, 0), data...)
	}
	hdr := structuredHeader(req.cookie, replyOffsetData, 8+int(req.length))
	return c.send(binary.BigEndian.AppendUint64(hdr, req.off), data...)
}

// readData gets the bytes a READ asks for: lent by the device when the budget
// took the read as lent, or read into a recycled buffer.
func (c *connection) readData(ctx context.Context, req request) (data [][]byte, release func(), err error) {
	if req.lent {
		return c.srv.lender.Lend(ctx, int64(req.off), int64(req.length))
	}
	buf := getBuffer(int(req.length))
	if err := c.srv.dev.ReadAt(ctx, buf, int64(req.off)); err != nil {
		putBuffer(buf)
		return nil, nil, err
	}
	return [][]byte{buf}, func() { putBuffer(buf) }, nil
}

func (c *connection) blockStatus(ctx context.Context, req request) error {
	switch {
	case !c.metaAllocation:
		return c.errorReply(req, errInval, "no meta context was negotiated")
	case !req.inBounds || req.length == 0:
		return c.errorReply(req, errInval, "block status out of bounds")
	}
	limit := maxBlockStatusExtents
	if req.flags&cmdFlagReqOne != 0 {
		limit = 1
	}
	extents, err := c.srv.ext.Extents(ctx, int64(req.off), int64(req.length), limit)
	if errno := c.deviceErrno(req, err); errno != 0 {
		return c.errorReply(req, errno, "block status failed")
	}
	// The reply is built in one buffer, its length filled in last.
	reply := structuredHeader(req.cookie, replyBlockStatus, 0)
	reply = binary.BigEndian.AppendUint32(slices.Grow(reply, 4+8*min(len(extents), limit)), metaBaseAllocationID)
	left := int64(req.length)
	for _, e := range extents[:min(len(extents), limit)] {
		n := min(e.Length, left, math.MaxUint32)
		if n <= 0 {
			break
		}
		reply = binary.BigEndian.AppendUint32(reply, uint32(n))
		reply = binary.BigEndian.AppendUint32(reply, e.Flags&(StateHole|StateZero))
		left -= n
	}
	payload := len(reply) - structuredHeaderLen
	if payload == 4 {
		return c.errorReply(req, errIO, "no extents")
	}
	binary.BigEndian.PutUint32(reply[structuredHeaderLen-4:], uint32(payload))
	return c.send(reply)
}

// errorReply answers a failed request: a structured error chunk for the replies
// that are structured once negotiated (READ, BLOCK_STATUS), else a simple reply.
func (c *connection) errorReply(req request, errno uint32, msg string) error {
	if !c.structured {
		return c.simpleReply(req.cookie, errno)
	}
	b := structuredHeader(req.cookie, replyError, 6+len(msg))
	b = binary.BigEndian.AppendUint32(b, errno)
	b = binary.BigEndian.AppendUint16(b, uint16(len(msg)))
	return c.send(append(b, msg...))
}

func (c *connection) simpleReply(cookie uint64, errno uint32) error {
	return c.send(simpleHeader(cookie, errno))
}

func simpleHeader(cookie uint64, errno uint32) []byte {
	b := binary.BigEndian.AppendUint32(make([]byte, 0, 16), magicSimple)
	b = binary.BigEndian.AppendUint32(b, errno)
	return binary.BigEndian.AppendUint64(b, cookie)
}

// structuredHeaderLen is the length of a structured reply chunk's header, of
// which the last 4 bytes are the length of its payload.
const structuredHeaderLen = 20

// structuredHeader starts the one (final) chunk of a structured reply.
func structuredHeader(cookie uint64, typ uint16, length int) []byte {
	b := binary.BigEndian.AppendUint32(make([]byte, 0, 32), magicStructured)
	b = binary.BigEndian.AppendUint16(b, replyFlagDone)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, cookie)
	return binary.BigEndian.AppendUint32(b, uint32(length))
}

// send writes one reply whole, so replies of concurrent requests never
// interleave, in writes of at most replySlice bytes (one writev where the
// connection allows). The client has the reply timeout to take each slice: a
// client that takes a large reply slowly keeps its connection, one that takes
// nothing for that long loses it. A deadline renewed per slice rather than
// after a timed-out write, because a TLS connection is broken by one.
func (c *connection) send(hdr []byte, data ...[]byte) error {
	bufs := append(make(net.Buffers, 0, 1+len(data)), hdr)
	bufs = append(bufs, data...)
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	for len(bufs) > 0 {
		var deadline time.Time
		if t := c.srv.cfg.replyTimeout; t > 0 {
			deadline = time.Now().Add(t)
		}
		if err := c.conn.SetWriteDeadline(deadline); err != nil {
			return err
		}
		slice := takeSlice(&bufs, replySlice)
		_, err := slice.WriteTo(c.conn)
		if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
			return fmt.Errorf("the client took no reply for %v: %w", c.srv.cfg.replyTimeout, err)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// replySlice is the most send writes under one deadline.
const replySlice = 1 << 20

// takeSlice removes the first n bytes (fewer if there are not as many) from bufs
// and returns them.
func takeSlice(bufs *net.Buffers, n int) net.Buffers {
	var out net.Buffers
	for n > 0 && len(*bufs) > 0 {
		b := (*bufs)[0]
		if len(b) > n {
			out = append(out, b[:n])
			(*bufs)[0] = b[n:]
			return out
		}
		out = append(out, b)
		n -= len(b)
		*bufs = (*bufs)[1:]
	}
	return out
}

// Request buffers are recycled by power-of-two size class: fresh buffers cost
// page faults on every request, which showed as a third of a sequential read's
// time.
var bufferPools [bits.UintSize]sync.Pool

func getBuffer(n int) []byte {
	class := bits.Len(uint(max(n, 1) - 1))
	if b, ok := bufferPools[class].Get().(*[]byte); ok {
		return (*b)[:n]
	}
	return make([]byte, n, 1<<class)
}

// putBuffer recycles a buffer from getBuffer (nil is ignored).
func putBuffer(b []byte) {
	if cap(b) == 0 || cap(b)&(cap(b)-1) != 0 {
		return
	}
	b = b[:cap(b)]
	bufferPools[bits.Len(uint(cap(b)-1))].Put(&b)
}
