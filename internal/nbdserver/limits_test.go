package nbdserver

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// Tests of what a client that misbehaves on purpose can make the server hold:
// lent positions, block status replies, connection slots.

// lendDevice is a 1 TiB device that lends, as a backup device does: every lend
// holds each unit (chunk position) it touches until release. It counts the
// units and lends held, and lists as many extents as it is allowed to.
type lendDevice struct {
	unit int64

	readDelay         time.Duration // of ReadAt
	extentsPerRequest int           // at most, whatever the limit

	mu                        sync.Mutex
	held                      map[int64]int // unit: lends holding it
	maxUnits, lends, maxLimit int           // units held at most, lends held, largest limit asked for
}

func newLendDevice(unit int64) *lendDevice { return &lendDevice{unit: unit, held: map[int64]int{}} }

func (d *lendDevice) Size() int64     { return 1 << 40 }
func (d *lendDevice) LendUnit() int64 { return d.unit }

func (d *lendDevice) ReadAt(ctx context.Context, p []byte, _ int64) error {
	select {
	case <-time.After(d.readDelay):
	case <-ctx.Done():
		return ctx.Err()
	}
	clear(p)
	return nil
}

func (d *lendDevice) Lend(_ context.Context, off, n int64) ([][]byte, func(), error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	first, last := off/d.unit, (off+n-1)/d.unit
	for i := first; i <= last; i++ {
		d.held[i]++
	}
	d.lends++
	d.maxUnits = max(d.maxUnits, len(d.held))
	release := func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		for i := first; i <= last; i++ {
			if d.held[i]--; d.held[i] == 0 {
				delete(d.held, i)
			}
		}
		d.lends--
	}
	return [][]byte{make([]byte, n)}, release, nil
}

func (d *lendDevice) Extents(_ context.Context, _, _ int64, limit int) ([]Extent, error) {
	d.mu.Lock()
	d.maxLimit = max(d.maxLimit, limit)
	d.mu.Unlock()
	out := make([]Extent, min(limit, d.extentsPerRequest))
	for i := range out {
		out[i] = Extent{Length: 4096, Flags: uint32(i%2) * (StateHole | StateZero)}
	}
	return out, nil
}

func (d *lendDevice) stats() (maxUnits, lends, maxLimit int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.maxUnits, d.lends, d.maxLimit
}

// rawClient connects to the Unix socket of uri and negotiates structured
// replies, base:allocation and the default export; the connection is then in
// the transmission phase.
func rawClient(t *testing.T, uri string) net.Conn {
	t.Helper()
	conn, err := dialHandshake(strings.TrimPrefix(uri, "nbd+unix:///?socket="))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func dialHandshake(sock string) (net.Conn, error) {
	conn, err := net.Dial("unix", sock)
	if err != nil {
		return nil, err
	}
	if err := handshakeAsClient(conn); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

func handshakeAsClient(conn net.Conn) error {
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	defer conn.SetDeadline(time.Time{})
	if _, err := io.ReadFull(conn, make([]byte, 18)); err != nil {
		return err
	}
	if _, err := conn.Write([]byte{0, 0, 0, flagFixedNewstyle | flagNoZeroes}); err != nil {
		return err
	}
	query := binary.BigEndian.AppendUint32(nil, 0) // export ""
	query = binary.BigEndian.AppendUint32(query, 1)
	query = binary.BigEndian.AppendUint32(query, uint32(len(metaBaseAllocation)))
	for _, o := range []struct {
		typ  uint32
		data []byte
	}{{optStructuredReply, nil}, {optSetMetaContext, append(query, metaBaseAllocation...)}, {optGo, make([]byte, 6)}} {
		if err := clientOption(conn, o.typ, o.data); err != nil {
			return err
		}
	}
	return nil
}

// clientOption sends an option and reads its replies up to the acknowledgement.
func clientOption(conn net.Conn, typ uint32, data []byte) error {
	b := binary.BigEndian.AppendUint64(nil, magicOption)
	b = binary.BigEndian.AppendUint32(b, typ)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	if _, err := conn.Write(append(b, data...)); err != nil {
		return err
	}
	for {
		var hdr [20]byte
		if _, err := io.ReadFull(conn, hdr[:]); err != nil {
			return err
		}
		if _, err := io.CopyN(io.Discard, conn, int64(binary.BigEndian.Uint32(hdr[16:]))); err != nil {
			return err
		}
		switch reply := binary.BigEndian.Uint32(hdr[12:]); {
		case reply == repAck:
			return nil
		case reply&(1<<31) != 0:
			return errors.New("option refused")
		}
	}
}

func requestHeader(typ uint16, off uint64, length uint32, cookie uint64) []byte {
	b := binary.BigEndian.AppendUint32(nil, magicRequest)
	b = binary.BigEndian.AppendUint16(b, 0)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, cookie)
	b = binary.BigEndian.AppendUint64(b, off)
	return binary.BigEndian.AppendUint32(b, length)
}

// readReply reads one structured reply chunk and returns its cookie, type and
// payload.
func readReply(conn net.Conn) (cookie uint64, typ uint16, payload []byte, err error) {
	var hdr [structuredHeaderLen]byte
	if _, err := io.ReadFull(conn, hdr[:]); err != nil {
		return 0, 0, nil, err
	}
	payload = make([]byte, binary.BigEndian.Uint32(hdr[16:]))
	_, err = io.ReadFull(conn, payload)
	return binary.BigEndian.Uint64(hdr[8:]), binary.BigEndian.Uint16(hdr[6:]), payload, err
}

// TestStalledReaderHoldsBoundedLends: a client sends READs at distinct chunk
// positions and reads no reply. Small reads used to be lent too, each holding
// a whole position: 16384 of them held 64 GiB of 4 MiB positions. Now small
// reads are copied, and the positions lent reads hold are charged to the
// connection, whose replies then hold no more than its budget.
func TestStalledReaderHoldsBoundedLends(t *testing.T) {
	const unit = 4 << 20
	dev := newLendDevice(unit)
	conn := rawClient(t, serveDevice(t, dev))
	var reqs []byte
	for i := range uint64(2000) {
		length := uint32(4096)
		if i%2 == 1 {
			length = 256 << 10
		}
		reqs = append(reqs, requestHeader(cmdRead, i*unit+4096, length, i)...)
	}
	go conn.Write(reqs)
	time.Sleep(time.Second)
	maxUnits, _, _ := dev.stats()
	if limit := lendBudget(unit) / unit; maxUnits == 0 || int64(maxUnits) > limit {
		t.Errorf("a client reading no replies made the server hold %d positions of %d MiB at once, want 1 to %d",
			maxUnits, unit>>20, limit)
	}
	// Backpressure, not a lost request: every READ is answered once the client
	// reads.
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	answered := map[uint64]bool{}
	for range 2000 {
		cookie, typ, _, err := readReply(conn)
		if err != nil || typ != replyOffsetData {
			t.Fatalf("reply %d: type %d, %v", len(answered), typ, err)
		}
		answered[cookie] = true
	}
	if len(answered) != 2000 {
		t.Errorf("%d distinct requests answered of 2000", len(answered))
	}
}

// TestSequentialLentReadsShareTheirPositions: a position is charged once
// however many lent reads hold it, so a sequential reader keeps as many
// requests in flight as it sends (nbdcopy: 64 of 256 KiB), not one per
// position.
func TestSequentialLentReadsShareTheirPositions(t *testing.T) {
	dev := newLendDevice(4 << 20)
	conn := rawClient(t, serveDevice(t, dev))
	const reads = 200 // 50 MiB: 13 positions
	var reqs []byte
	for i := range uint64(reads) {
		reqs = append(reqs, requestHeader(cmdRead, i<<18, 256<<10, i)...)
	}
	if _, err := conn.Write(reqs); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, lends, _ := dev.stats(); lends < reads; _, lends, _ = dev.stats() {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d sequential reads in flight: the others wait for a budget they fit in", lends, reads)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestLentReadOverTwoLargeUnits: one READ may touch two positions of the
// largest chunk size, more than a connection's usual budget; it is answered.
func TestLentReadOverTwoLargeUnits(t *testing.T) {
	dev := newLendDevice(64 << 20)
	conn := rawClient(t, serveDevice(t, dev))
	if _, err := conn.Write(requestHeader(cmdRead, 48<<20, MaxRequest, 3)); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	cookie, typ, payload, err := readReply(conn)
	if err != nil || cookie != 3 || typ != replyOffsetData || len(payload) != 8+MaxRequest {
		t.Fatalf("a read over two positions of 64 MiB: reply %d type %d of %d bytes, %v", cookie, typ, len(payload), err)
	}
	if maxUnits, _, _ := dev.stats(); maxUnits != 2 {
		t.Errorf("the read held %d positions, want 2", maxUnits)
	}
}

// TestBlockStatusHoldsBoundedMemory: each BLOCK_STATUS over 4 GiB may list
// 65536 extents and reply with 512 KiB; 1500 of them, sent by a client that
// reads no reply, grew the heap by 362 MiB when they were counted as 4 KiB each
// and the device listed every extent of the range before the reply was cut.
func TestBlockStatusHoldsBoundedMemory(t *testing.T) {
	dev := newLendDevice(4 << 20)
	dev.extentsPerRequest = 70000
	conn := rawClient(t, serveDevice(t, dev))

	// One reply: cut at the descriptor limit, which the device was told.
	if _, err := conn.Write(requestHeader(cmdBlockStatus, 0, 0xffffffff, 1)); err != nil {
		t.Fatal(err)
	}
	_, typ, payload, err := readReply(conn)
	if err != nil || typ != replyBlockStatus || len(payload) != 4+8*maxBlockStatusExtents {
		t.Fatalf("block status reply: type %d, %d bytes, %v", typ, len(payload), err)
	}
	if _, _, limit := dev.stats(); limit != maxBlockStatusExtents {
		t.Errorf("the device was asked for at most %d extents, want %d", limit, maxBlockStatusExtents)
	}

	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	var reqs []byte
	for i := range uint64(1500) {
		reqs = append(reqs, requestHeader(cmdBlockStatus, 0, 0xffffffff, i)...)
	}
	go conn.Write(reqs)
	time.Sleep(2 * time.Second)
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	if grown := int64(after.HeapInuse) - int64(before.HeapInuse); grown > 2*maxInFlightBytes {
		t.Errorf("1500 block status requests of a client reading no replies grew the heap by %d MiB, want at most %d",
			grown>>20, 2*maxInFlightBytes>>20)
	}
}

// TestIdleClientIsDisconnected: a client that sends no request for the idle
// timeout is disconnected, but not while a request of its is in progress.
func TestIdleClientIsDisconnected(t *testing.T) {
	dev := newLendDevice(4 << 20)
	dev.readDelay = 600 * time.Millisecond
	conn := rawClient(t, serveDevice(t, dev, WithIdleTimeout(300*time.Millisecond)))
	if _, err := conn.Write(requestHeader(cmdRead, 0, 4096, 7)); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if cookie, typ, _, err := readReply(conn); err != nil || cookie != 7 || typ != replyOffsetData {
		t.Fatalf("a read slower than the idle timeout: reply %d type %d, %v", cookie, typ, err)
	}
	started := time.Now()
	n, err := conn.Read(make([]byte, 1))
	if err != io.EOF {
		t.Fatalf("idle connection: read %d bytes, %v; want it closed", n, err)
	}
	if waited := time.Since(started); waited < 200*time.Millisecond {
		t.Errorf("closed %v after the last reply, before the idle timeout", waited)
	}
}

// TestClientReadingNoRepliesLosesItsSlot: a client that stops reading replies
// is disconnected after the reply timeout and its slot serves the next client;
// it used to keep the slot for ever.
func TestClientReadingNoRepliesLosesItsSlot(t *testing.T) {
	uri := serveDevice(t, &memDevice{data: testDisk(), blockSize: 1 << 20},
		WithMaxConnections(1), WithReplyTimeout(300*time.Millisecond))
	stalled := rawClient(t, uri)
	var reqs []byte
	for i := range uint64(64) {
		reqs = append(reqs, requestHeader(cmdRead, 0, 1<<20, i)...)
	}
	if _, err := stalled.Write(reqs); err != nil {
		t.Fatal(err)
	}
	sock := strings.TrimPrefix(uri, "nbd+unix:///?socket=")
	deadline := time.Now().Add(5 * time.Second)
	for {
		conn, err := dialHandshake(sock)
		if err == nil {
			conn.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no slot for a new client 5 s after the only client stopped reading replies: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestSlowClientKeepsItsConnection: the reply timeout bounds how long a client
// may take nothing, not how long a large reply may take. A client that reads a
// 4 MiB reply steadily but slowly (64 KiB every 20 ms, 1.3 s in all, against a
// reply timeout of 500 ms) gets it whole; one deadline for the whole reply cut it.
func TestSlowClientKeepsItsConnection(t *testing.T) {
	disk := testDisk()
	conn := rawClient(t, serveDevice(t, &memDevice{data: disk, blockSize: 1 << 20}, WithReplyTimeout(500*time.Millisecond)))
	if _, err := conn.Write(requestHeader(cmdRead, 0, 4<<20, 9)); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	var got []byte
	buf := make([]byte, 64<<10)
	want := structuredHeaderLen + 8 + 4<<20 // header, offset, data
	for len(got) < want {
		n, err := conn.Read(buf[:min(len(buf), want-len(got))])
		got = append(got, buf[:n]...)
		if err != nil {
			t.Fatalf("after %d of %d bytes: %v", len(got), want, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !bytes.Equal(got[structuredHeaderLen+8:], disk[:4<<20]) {
		t.Error("the slowly read reply differs from the disk")
	}
}
