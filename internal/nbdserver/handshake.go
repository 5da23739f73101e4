package nbdserver

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"go.uber.org/zap"
)

// handshakeTimeout bounds the whole option haggling of one client.
const handshakeTimeout = 30 * time.Second

// errClientLeft ends a handshake the client ended itself (NBD_OPT_ABORT, or a
// close before sending anything).
var errClientLeft = errors.New("client left")

// errTLSRefused ends a handshake whose TLS handshake failed: with client
// certificates required, this is how a client without a valid one is refused.
var errTLSRefused = errors.New("TLS handshake failed")

// connection is the state of one client.
type connection struct {
	srv  *Server
	conn net.Conn
	r    *bufio.Reader
	log  *zap.Logger

	noZeroes       bool
	tls            bool // the connection is TLS now
	structured     bool
	metaAllocation bool

	writeMu sync.Mutex // one reply at a time on the wire
}

// handshake runs the fixed newstyle handshake up to the start of transmission.
func (c *connection) handshake() error {
	if err := c.conn.SetDeadline(time.Now().Add(handshakeTimeout)); err != nil {
		return err
	}
	c.r = bufio.NewReaderSize(c.conn, 64<<10)
	var greeting [18]byte
	binary.BigEndian.PutUint64(greeting[0:], magicInit)
	binary.BigEndian.PutUint64(greeting[8:], magicOption)
	binary.BigEndian.PutUint16(greeting[16:], flagFixedNewstyle|flagNoZeroes)
	if _, err := c.conn.Write(greeting[:]); err != nil {
		return err
	}
	var clientFlags [4]byte
	if _, err := io.ReadFull(c.r, clientFlags[:]); err != nil {
		return errClientLeft
	}
	flags := binary.BigEndian.Uint32(clientFlags[:])
	if flags&flagFixedNewstyle == 0 || flags&^uint32(flagFixedNewstyle|flagNoZeroes) != 0 {
		return fmt.Errorf("client flags %#x: only fixed newstyle clients are served", flags)
	}
	c.noZeroes = flags&flagNoZeroes != 0
	for range maxOptions {
		done, err := c.option()
		if err != nil || done {
			if err == nil {
				err = c.conn.SetDeadline(time.Time{})
			}
			return err
		}
	}
	return fmt.Errorf("more than %d options", maxOptions)
}

// option reads and answers one option; done reports that transmission starts.
func (c *connection) option() (done bool, err error) {
	var hdr [16]byte
	if _, err := io.ReadFull(c.r, hdr[:]); err != nil {
		return false, errClientLeft
	}
	if binary.BigEndian.Uint64(hdr[0:]) != magicOption {
		return false, fmt.Errorf("bad option magic %#x", binary.BigEndian.Uint64(hdr[0:]))
	}
	opt, n := binary.BigEndian.Uint32(hdr[8:]), binary.BigEndian.Uint32(hdr[12:])
	if n > maxOptionLength {
		// Skipping the data would let a client stall the server for 4 GiB.
		_ = c.optionReply(opt, repErrTooBig, []byte("option data too long"))
		return false, fmt.Errorf("option %d: %d bytes of data", opt, n)
	}
	data := make([]byte, n)
	if _, err := io.ReadFull(c.r, data); err != nil {
		return false, errClientLeft
	}
	if c.srv.cfg.tls != nil && !c.tls && opt != optStartTLS && opt != optAbort {
		// TLS is required: nothing about the export before it.
		if opt == optExportName {
			return false, errors.New("NBD_OPT_EXPORT_NAME before TLS")
		}
		return false, c.optionReply(opt, repErrTLSReqd, []byte("TLS is required"))
	}
	switch opt {
	case optExportName:
		return true, c.exportName(data)
	case optGo, optInfo:
		return c.info(opt, data)
	case optList:
		return false, c.list(data)
	case optAbort:
		_ = c.optionReply(opt, repAck, nil)
		return false, errClientLeft
	case optStructuredReply:
		if n != 0 {
			return false, c.optionReply(opt, repErrInvalid, []byte("structured reply takes no data"))
		}
		c.structured = true
		return false, c.optionReply(opt, repAck, nil)
	case optListMetaContext, optSetMetaContext:
		return false, c.metaContext(opt, data)
	case optStartTLS:
		return false, c.startTLS(data)
	default:
		return false, c.optionReply(opt, repErrUnsup, nil)
	}
}

func (c *connection) optionReply(opt, typ uint32, data []byte) error {
	b := make([]byte, 20+len(data))
	binary.BigEndian.PutUint64(b[0:], magicOptionReply)
	binary.BigEndian.PutUint32(b[8:], opt)
	binary.BigEndian.PutUint32(b[12:], typ)
	binary.BigEndian.PutUint32(b[16:], uint32(len(data)))
	copy(b[20:], data)
	_, err := c.conn.Write(b)
	return err
}

// knownExport reports whether name is the export (the default name "" is too).
func (c *connection) knownExport(name string) bool {
	return name == "" || name == c.srv.cfg.name
}

// exportName answers the old NBD_OPT_EXPORT_NAME: no reply but the export's size
// and flags, and an unknown name closes the connection.
func (c *connection) exportName(name []byte) error {
	if !c.knownExport(string(name)) {
		return fmt.Errorf("unknown export %q", name)
	}
	b := make([]byte, 10, 134)
	binary.BigEndian.PutUint64(b[0:], uint64(c.srv.dev.Size()))
	binary.BigEndian.PutUint16(b[8:], c.srv.transmissionFlags())
	if !c.noZeroes {
		b = b[:134]
	}
	_, err := c.conn.Write(b)
	return err
}

// info answers NBD_OPT_INFO and NBD_OPT_GO: the export's size, flags and block
// sizes, whatever the client asked for (servers may send unrequested items).
func (c *connection) info(opt uint32, data []byte) (done bool, err error) {
	name, rest, ok := lengthPrefixed(data)
	if !ok || len(rest) < 2 || len(rest) != 2+2*int(binary.BigEndian.Uint16(rest)) {
		return false, c.optionReply(opt, repErrInvalid, []byte("malformed info request"))
	}
	if !c.knownExport(name) {
		return false, c.optionReply(opt, repErrUnknown, []byte("no such export"))
	}
	export := make([]byte, 12)
	binary.BigEndian.PutUint16(export[0:], infoExport)
	binary.BigEndian.PutUint64(export[2:], uint64(c.srv.dev.Size()))
	binary.BigEndian.PutUint16(export[10:], c.srv.transmissionFlags())
	if err := c.optionReply(opt, repInfo, export); err != nil {
		return false, err
	}
	sizes := make([]byte, 14)
	binary.BigEndian.PutUint16(sizes[0:], infoBlockSize)
	binary.BigEndian.PutUint32(sizes[2:], 1)
	binary.BigEndian.PutUint32(sizes[6:], c.srv.cfg.preferredBlock)
	binary.BigEndian.PutUint32(sizes[10:], MaxRequest)
	if err := c.optionReply(opt, repInfo, sizes); err != nil {
		return false, err
	}
	return opt == optGo, c.optionReply(opt, repAck, nil)
}

func (c *connection) list(data []byte) error {
	if len(data) != 0 {
		return c.optionReply(optList, repErrInvalid, []byte("list takes no data"))
	}
	name := []byte(c.srv.cfg.name)
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	if err := c.optionReply(optList, repServer, append(b, name...)); err != nil {
		return err
	}
	return c.optionReply(optList, repAck, nil)
}

// metaContext answers LIST and SET_META_CONTEXT. The only context is
// base:allocation, offered when the device knows its extents; SET needs
// structured replies, which carry block status.
func (c *connection) metaContext(opt uint32, data []byte) error {
	name, rest, ok := lengthPrefixed(data)
	if !ok || len(rest) < 4 {
		return c.optionReply(opt, repErrInvalid, []byte("malformed meta context request"))
	}
	if !c.knownExport(name) {
		return c.optionReply(opt, repErrUnknown, []byte("no such export"))
	}
	if opt == optSetMetaContext && !c.structured {
		return c.optionReply(opt, repErrInvalid, []byte("structured replies are needed first"))
	}
	count, rest := binary.BigEndian.Uint32(rest), rest[4:]
	match := opt == optListMetaContext && count == 0 // an empty LIST asks for every context
	for range count {
		var q string
		if q, rest, ok = lengthPrefixed(rest); !ok {
			return c.optionReply(opt, repErrInvalid, []byte("malformed meta context query"))
		}
		match = match || q == metaBaseAllocation || (opt == optListMetaContext && q == "base:")
	}
	if len(rest) != 0 {
		return c.optionReply(opt, repErrInvalid, []byte("trailing data in meta context request"))
	}
	match = match && c.srv.ext != nil
	if opt == optSetMetaContext {
		c.metaAllocation = match
	}
	if match {
		reply := binary.BigEndian.AppendUint32(nil, metaBaseAllocationID)
		if err := c.optionReply(opt, repMetaContext, append(reply, metaBaseAllocation...)); err != nil {
			return err
		}
	}
	return c.optionReply(opt, repAck, nil)
}

// lengthPrefixed splits b into a string with a 32-bit length before it (at most
// 4096 bytes, as the protocol bounds strings) and what follows.
func lengthPrefixed(b []byte) (s string, rest []byte, ok bool) {
	if len(b) < 4 {
		return "", nil, false
	}
	n := binary.BigEndian.Uint32(b)
	if n > 4096 || uint64(n) > uint64(len(b)-4) {
		return "", nil, false
	}
	return string(b[4 : 4+n]), b[4+n:], true
}

// startTLS answers NBD_OPT_STARTTLS: the rest of the handshake and the
// transmission go over TLS.
func (c *connection) startTLS(data []byte) error {
	switch {
	case c.srv.cfg.tls == nil:
		return c.optionReply(optStartTLS, repErrPolicy, []byte("TLS is not offered by this server"))
	case c.tls || len(data) != 0:
		return c.optionReply(optStartTLS, repErrInvalid, []byte("TLS already started, or data with STARTTLS"))
	case c.r.Buffered() != 0:
		return errors.New("data sent after NBD_OPT_STARTTLS before its reply")
	}
	if err := c.optionReply(optStartTLS, repAck, nil); err != nil {
		return err
	}
	conn := tls.Server(c.conn, c.srv.cfg.tls)
	if err := conn.Handshake(); err != nil {
		return fmt.Errorf("%w: %w", errTLSRefused, err)
	}
	c.conn, c.tls = conn, true
	c.r.Reset(conn)
	return nil
}
