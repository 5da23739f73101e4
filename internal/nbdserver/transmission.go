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
	"sync"

	"go.uber.org/zap"
	"golang.org/x/sync/semaphore"
)

// request is one command of the transmission phase.
type request struct {
	flags   uint16
	typ     uint16
	cookie  uint64
	off     uint64
	length  uint32
	payload []byte // of a WRITE
}

// transmit reads requests and answers each in a goroutine of its own, so that
// clients can keep many in flight; the bytes in progress are bounded by
// maxInFlightBytes, beyond which the next request waits.
func (c *connection) transmit(ctx context.Context) error {
	inFlight := semaphore.NewWeighted(maxInFlightBytes)
	var wg sync.WaitGroup
	defer wg.Wait()
	var hdr [28]byte
	for {
		if _, err := io.ReadFull(c.r, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if m := binary.BigEndian.Uint32(hdr[0:]); m != magicRequest {
			return fmt.Errorf("bad request magic %#x", m)
		}
		req := request{
			flags: binary.BigEndian.Uint16(hdr[4:]), typ: binary.BigEndian.Uint16(hdr[6:]),
			cookie: binary.BigEndian.Uint64(hdr[8:]), off: binary.BigEndian.Uint64(hdr[16:]),
			length: binary.BigEndian.Uint32(hdr[24:]),
		}
		if req.typ == cmdDisc {
			return nil
		}
		if req.typ == cmdWrite && req.length > MaxRequest {
			return fmt.Errorf("write of %d bytes: more than %d", req.length, MaxRequest)
		}
		weight := int64(4096)
		if (req.typ == cmdRead && req.length <= MaxRequest) || req.typ == cmdWrite {
			weight = max(weight, int64(req.length))
		}
		if err := inFlight.Acquire(ctx, weight); err != nil {
			return nil
		}
		if req.typ == cmdWrite {
			req.payload = getBuffer(int(req.length))
			if _, err := io.ReadFull(c.r, req.payload); err != nil {
				inFlight.Release(weight)
				return fmt.Errorf("write payload: %w", err)
			}
		}
		wg.Go(func() {
			defer inFlight.Release(weight)
			defer putBuffer(req.payload)
			if err := c.handle(ctx, req); err != nil && ctx.Err() == nil {
				c.log.Info("nbd reply failed", zap.Error(err))
				c.conn.Close()
			}
		})
	}
}

// handle answers one request; an error is a failure to send the reply.
func (c *connection) handle(ctx context.Context, req request) error {
	s := c.srv
	inBounds := req.off <= uint64(s.dev.Size()) && uint64(req.length) <= uint64(s.dev.Size())-req.off
	writable := s.writer != nil
	switch {
	case req.typ == cmdRead:
		return c.read(ctx, req, inBounds)
	case req.typ == cmdBlockStatus:
		return c.blockStatus(ctx, req, inBounds)
	case req.typ == cmdFlush:
		if writable {
			return c.simpleReply(req.cookie, c.deviceErrno(req, s.writer.Flush(ctx)))
		}
		return c.simpleReply(req.cookie, 0)
	case req.typ != cmdWrite && req.typ != cmdWriteZeroes && req.typ != cmdTrim:
		return c.simpleReply(req.cookie, errInval)
	case !writable:
		return c.simpleReply(req.cookie, errPerm)
	case !inBounds:
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

func (c *connection) read(ctx context.Context, req request, inBounds bool) error {
	switch {
	case req.length > MaxRequest:
		return c.errorReply(req, errOverflow, "read larger than the maximum block size")
	case !inBounds || req.length == 0:
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

// readData gets the bytes a READ asks for: lent by the device when it can, or
// read into a recycled buffer.
func (c *connection) readData(ctx context.Context, req request) (data [][]byte, release func(), err error) {
	if c.srv.lender != nil {
		return c.srv.lender.Lend(ctx, int64(req.off), int64(req.length))
	}
	buf := getBuffer(int(req.length))
	if err := c.srv.dev.ReadAt(ctx, buf, int64(req.off)); err != nil {
		putBuffer(buf)
		return nil, nil, err
	}
	return [][]byte{buf}, func() { putBuffer(buf) }, nil
}

func (c *connection) blockStatus(ctx context.Context, req request, inBounds bool) error {
	switch {
	case !c.metaAllocation:
		return c.errorReply(req, errInval, "no meta context was negotiated")
	case !inBounds || req.length == 0:
		return c.errorReply(req, errInval, "block status out of bounds")
	}
	extents, err := c.srv.ext.Extents(ctx, int64(req.off), int64(req.length))
	if errno := c.deviceErrno(req, err); errno != 0 {
		return c.errorReply(req, errno, "block status failed")
	}
	payload := binary.BigEndian.AppendUint32(nil, metaBaseAllocationID)
	left := int64(req.length)
	for _, e := range extents {
		if left <= 0 || len(payload) >= 4+8*maxBlockStatusExtents {
			break
		}
		n := min(e.Length, left, math.MaxUint32)
		if n <= 0 {
			break
		}
		payload = binary.BigEndian.AppendUint32(payload, uint32(n))
		payload = binary.BigEndian.AppendUint32(payload, e.Flags&(StateHole|StateZero))
		left -= n
		if req.flags&cmdFlagReqOne != 0 {
			break
		}
	}
	if len(payload) == 4 {
		return c.errorReply(req, errIO, "no extents")
	}
	return c.send(append(structuredHeader(req.cookie, replyBlockStatus, len(payload)), payload...))
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

// structuredHeader starts the one (final) chunk of a structured reply.
func structuredHeader(cookie uint64, typ uint16, length int) []byte {
	b := binary.BigEndian.AppendUint32(make([]byte, 0, 32), magicStructured)
	b = binary.BigEndian.AppendUint16(b, replyFlagDone)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, cookie)
	return binary.BigEndian.AppendUint32(b, uint32(length))
}

// send writes one reply whole (in one writev where the connection allows), so
// replies of concurrent requests never interleave.
func (c *connection) send(hdr []byte, data ...[]byte) error {
	bufs := append(make(net.Buffers, 0, 1+len(data)), hdr)
	bufs = append(bufs, data...)
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	_, err := bufs.WriteTo(c.conn)
	return err
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
