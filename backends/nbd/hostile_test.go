package nbd

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/blockferry/blockferry/backends"
	"github.com/blockferry/blockferry/internal/testutil"
)

// hostileServer is a fixed newstyle NBD server of a read-only 1 GiB export that
// agrees to every meta context asked for and answers BLOCK_STATUS with the same
// reply chunk, repeated. Real servers (qemu-nbd, nbdkit) cannot be made to break
// the protocol, so these tests speak it themselves.
type hostileServer struct {
	// status is the payload of every block status chunk: the context id (1, the
	// first context asked for) and descriptors. It is built before the test
	// measures what the client allocates.
	status []byte
	// extra is the number of chunks sent before the final one, which NBD allows
	// only for other meta contexts.
	extra int
	// final: the last chunk is sent. Without it the server sends nothing more
	// and holds the connection until hold closes or 5 s pass.
	final bool
	hold  <-chan struct{}
}

const (
	hostileSize = 1 << 30
	nbdMagic    = 0x4e42444d41474943 // "NBDMAGIC"
	optMagic    = 0x49484156454f5054 // "IHAVEOPT"
	replyMagic  = 0x0003e889045565a9
)

// statusPayload is a block status chunk payload for context 1 of n descriptors
// of length bytes each, their flags alternating between data and a hole.
func statusPayload(n int, length uint32) []byte {
	p := binary.BigEndian.AppendUint32(make([]byte, 0, 4+8*n), 1)
	for i := range n {
		p = binary.BigEndian.AppendUint32(p, length)
		p = binary.BigEndian.AppendUint32(p, uint32(i%2)*3) // 3: hole and zero
	}
	return p
}

// start listens on a Unix socket and serves every connection; the listener closes
// with the test.
func (s hostileServer) start(t *testing.T) string {
	sock := filepath.Join(t.TempDir(), "hostile.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go s.serve(c)
		}
	}()
	return "nbd+unix:///?socket=" + sock
}

func (s hostileServer) serve(c net.Conn) {
	defer c.Close()
	if s.negotiate(c) != nil {
		return
	}
	for {
		var req [28]byte
		if _, err := io.ReadFull(c, req[:]); err != nil {
			return
		}
		typ, cookie := binary.BigEndian.Uint16(req[6:]), binary.BigEndian.Uint64(req[8:])
		switch typ {
		case 7: // NBD_CMD_BLOCK_STATUS
			if s.blockStatus(c, cookie) != nil {
				return
			}
		case 2: // NBD_CMD_DISC
			return
		default: // a simple reply with EINVAL
			r := binary.BigEndian.AppendUint32(nil, 0x67446698)
			r = binary.BigEndian.AppendUint32(r, 22)
			if _, err := c.Write(binary.BigEndian.AppendUint64(r, cookie)); err != nil {
				return
			}
		}
	}
}

// negotiate does the handshake: structured replies, every meta context asked
// for, and the export.
func (s hostileServer) negotiate(c net.Conn) error {
	greeting := binary.BigEndian.AppendUint64(nil, nbdMagic)
	greeting = binary.BigEndian.AppendUint64(greeting, optMagic)
	if _, err := c.Write(binary.BigEndian.AppendUint16(greeting, 1|2)); err != nil { // fixed newstyle, no zeroes
		return err
	}
	if _, err := io.CopyN(io.Discard, c, 4); err != nil { // the client's flags
		return err
	}
	reply := func(opt, typ uint32, data []byte) error {
		r := binary.BigEndian.AppendUint64(nil, replyMagic)
		r = binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(r, opt), typ)
		_, err := c.Write(append(binary.BigEndian.AppendUint32(r, uint32(len(data))), data...))
		return err
	}
	for {
		var hdr [16]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return err
		}
		opt, n := binary.BigEndian.Uint32(hdr[8:]), binary.BigEndian.Uint32(hdr[12:])
		if n > 64<<10 {
			return errors.New("option too long")
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(c, data); err != nil {
			return err
		}
		var err error
		switch opt {
		case 8: // NBD_OPT_STRUCTURED_REPLY
			err = reply(opt, 1, nil)
		case 10: // NBD_OPT_SET_META_CONTEXT: export name, then the queries
			err = agreeContexts(data, func(id uint32, name []byte) error {
				return reply(opt, 4, append(binary.BigEndian.AppendUint32(nil, id), name...))
			})
			if err == nil {
				err = reply(opt, 1, nil)
			}
		case 7: // NBD_OPT_GO
			info := binary.BigEndian.AppendUint64([]byte{0, 0}, hostileSize) // NBD_INFO_EXPORT
			info = binary.BigEndian.AppendUint16(info, 1|2)                  // has flags, read-only
			if err = reply(opt, 3, info); err == nil {
				return reply(opt, 1, nil)
			}
		default:
			err = reply(opt, 1<<31|1, nil) // NBD_REP_ERR_UNSUP
		}
		if err != nil {
			return err
		}
	}
}

// agreeContexts calls agree for each query of a SET_META_CONTEXT option, with ids
// from 1.
func agreeContexts(data []byte, agree func(id uint32, name []byte) error) error {
	field := func() ([]byte, bool) {
		if len(data) < 4 || uint64(len(data)-4) < uint64(binary.BigEndian.Uint32(data)) {
			return nil, false
		}
		n := binary.BigEndian.Uint32(data)
		f := data[4 : 4+n]
		data = data[4+n:]
		return f, true
	}
	if _, ok := field(); !ok || len(data) < 4 {
		return errors.New("bad SET_META_CONTEXT")
	}
	queries := binary.BigEndian.Uint32(data)
	data = data[4:]
	for id := uint32(1); id <= queries; id++ {
		name, ok := field()
		if !ok {
			return errors.New("bad SET_META_CONTEXT query")
		}
		if err := agree(id, name); err != nil {
			return err
		}
	}
	return nil
}

// blockStatus answers one request: extra chunks, then the final one or nothing.
func (s hostileServer) blockStatus(c net.Conn, cookie uint64) error {
	chunk := func(flags uint16) error {
		h := binary.BigEndian.AppendUint32(nil, 0x668e33ef)
		h = binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(h, flags), 5) // NBD_REPLY_TYPE_BLOCK_STATUS
		h = binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint64(h, cookie), uint32(len(s.status)))
		if _, err := c.Write(h); err != nil {
			return err
		}
		_, err := c.Write(s.status)
		return err
	}
	for range s.extra {
		if err := chunk(0); err != nil {
			return err
		}
	}
	if !s.final {
		select {
		case <-s.hold:
		case <-time.After(5 * time.Second):
		}
		return errors.New("held")
	}
	return chunk(1) // NBD_REPLY_FLAG_DONE
}

// TestBlockStatusRepliesAreBounded: libnbd passes on any number of block status
// chunks for one request, where NBD allows one per meta context. A server that
// sends 1 MiB chunk after chunk (which made the client keep 3.6 GiB for 400 of
// them), or never the final one, fails the request at the second chunk, for good
// and at once, with a small allocation, and leaves no connection to wait for.
func TestBlockStatusRepliesAreBounded(t *testing.T) {
	status := statusPayload(1<<17, 8) // 1 MiB describing 1 MiB
	for _, tc := range []struct {
		name  string
		final bool
	}{
		{"more chunks than contexts", true},
		{"no final chunk", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hold := make(chan struct{})
			defer close(hold)
			uri := hostileServer{status: status, extra: 64, final: tc.final, hold: hold}.start(t)
			src, err := backends.OpenSource(context.Background(), uri)
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			var ext []backends.Extent
			began := time.Now()
			n := testutil.Allocated(func() { ext, err = src.Extents(ctx, 0, 1<<20) })
			if !errors.Is(err, errProtocol) || !errors.Is(err, backends.ErrInvalidSource) {
				t.Fatalf("%d extents, error %v; want %v and %v", len(ext), err, errProtocol, backends.ErrInvalidSource)
			}
			t.Logf("%v in %v, %d KiB allocated", err, time.Since(began).Round(time.Millisecond), n>>10)
			if took := time.Since(began); took > 2*time.Second {
				t.Errorf("the request failed after %v", took)
			}
			if n > 8<<20 {
				t.Errorf("the request allocated %d MiB", n>>20)
			}
			// The connection is cut: what comes next fails the same way, at once.
			if _, err := src.ReadAt(ctx, make([]byte, 4096), 0); !errors.Is(err, backends.ErrInvalidSource) {
				t.Errorf("read after the cut: %v, want %v", err, backends.ErrInvalidSource)
			}
			began = time.Now()
			if err := src.Close(); err != nil || time.Since(began) > 2*time.Second {
				t.Errorf("close: %v after %v", err, time.Since(began))
			}
		})
	}
}

// TestBlockStatusKeepsAPrefix: a single reply with more descriptors than the
// client keeps is cut to maxStatusDescriptors of them, and the window ends where
// they do, to be asked again from there; NBD lets a server describe less than
// was asked.
func TestBlockStatusKeepsAPrefix(t *testing.T) {
	const length = 512
	uri := hostileServer{status: statusPayload(3*maxStatusDescriptors, length), final: true}.start(t)
	src, err := backends.OpenSource(context.Background(), uri)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	for _, start := range []int64{0, maxStatusDescriptors * length} {
		ext, err := src.Extents(context.Background(), start, hostileSize)
		if err != nil {
			t.Fatal(err)
		}
		last := ext[len(ext)-1]
		if len(ext) != maxStatusDescriptors || ext[0].Start != start || last.End() != start+maxStatusDescriptors*length {
			t.Fatalf("from %d: %d extents from %d to %d; want %d to %d", start, len(ext), ext[0].Start, last.End(),
				maxStatusDescriptors, start+maxStatusDescriptors*length)
		}
		if ext[0].Zero || !ext[1].Zero || !ext[0].Dirty {
			t.Errorf("from %d: first extents %+v", start, ext[:2])
		}
	}
}

// TestAbortTouchesOnlyItsSocket: libnbd closes a connection's socket itself when
// the connection dies, and the descriptor's number goes to the next file opened.
// An abort after that (a transfer's grace ending, close giving up) must not shut
// down that other file, as it did when it used libnbd's descriptor.
func TestAbortTouchesOnlyItsSocket(t *testing.T) {
	hold := make(chan struct{})
	uri := hostileServer{status: statusPayload(1, 512), final: false, hold: hold}.start(t)
	src, err := backends.OpenSource(context.Background(), uri)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	c := src.(*source).pool.all()[0]
	go func() { time.Sleep(100 * time.Millisecond); close(hold) }() // the server drops the connection
	if _, err := src.Extents(context.Background(), 0, 1<<20); err == nil {
		t.Fatal("block status on a dropped connection succeeded")
	}
	<-c.loopDone
	// New sockets take the lowest free numbers, among them the one libnbd freed.
	var others [][2]int
	for range 16 {
		p, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(p[0])
		defer unix.Close(p[1])
		others = append(others, p)
	}
	c.abort(errNoAnswer)
	for _, p := range others {
		if _, err := unix.Write(p[0], []byte("x")); err != nil {
			t.Errorf("socket %d, opened after the connection died, was shut down by its abort: %v", p[0], err)
		}
	}
}
