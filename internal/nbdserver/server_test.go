package nbdserver

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blockferry/blockferry/internal/testutil"
)

// memDevice is a device in memory whose zero blocks of blockSize are holes, and
// whose reads fail where they touch [badOff, badOff+badLen).
type memDevice struct {
	mu             sync.Mutex
	data           []byte
	blockSize      int64
	badOff, badLen int64
}

func (d *memDevice) Size() int64 { return int64(len(d.data)) }

func (d *memDevice) ReadAt(_ context.Context, p []byte, off int64) error {
	if d.badLen > 0 && off < d.badOff+d.badLen && off+int64(len(p)) > d.badOff {
		return errors.New("injected corruption")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	copy(p, d.data[off:])
	return nil
}

func (d *memDevice) Extents(_ context.Context, off, length int64, limit int) ([]Extent, error) {
	var out []Extent
	for at := off; at < off+length && at < d.Size(); {
		end := min((at/d.blockSize+1)*d.blockSize, d.Size())
		var flags uint32
		if isZero(d.data[at:end]) {
			flags = StateHole | StateZero
		}
		if n := len(out); n > 0 && out[n-1].Flags == flags {
			out[n-1].Length += end - at
		} else if n < limit {
			out = append(out, Extent{Length: end - at, Flags: flags})
		} else {
			break
		}
		at = end
	}
	return out, nil
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// rwDevice adds writes to memDevice.
type rwDevice struct{ *memDevice }

func (d rwDevice) WriteAt(_ context.Context, p []byte, off int64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	copy(d.data[off:], p)
	return nil
}

func (d rwDevice) Zero(_ context.Context, off, length int64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	clear(d.data[off : off+length])
	return nil
}

func (d rwDevice) Flush(context.Context) error { return nil }

// serveDevice serves dev on a Unix socket until the test ends and returns its URI.
func serveDevice(t *testing.T, dev Device, opts ...Option) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- New(dev, opts...).Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return "nbd+unix:///?socket=" + sock
}

// testDisk is 24 MiB: data in the first 4 MiB, a hole, a 1 MiB data run at 12 MiB,
// and zeroes to the end.
func testDisk() []byte {
	data := make([]byte, 24<<20)
	for i := range 4 << 20 {
		data[i] = byte(i*7 + i>>12)
	}
	for i := 12 << 20; i < 13<<20; i++ {
		data[i] = byte(i>>9) | 1
	}
	return data
}

func sha(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

func TestNbdinfoSeesExportAndMap(t *testing.T) {
	nbdinfo := testutil.RequireTool(t, "nbdinfo")
	dev := &memDevice{data: testDisk(), blockSize: 1 << 20}
	uri := serveDevice(t, dev, WithPreferredBlockSize(1<<20))
	out, err := exec.Command(nbdinfo, "--json", uri).CombinedOutput()
	if err != nil {
		t.Fatalf("nbdinfo: %v\n%s", err, out)
	}
	var info struct {
		Protocol string `json:"protocol"`
		Exports  []struct {
			Size          int64    `json:"export-size"`
			ReadOnly      bool     `json:"is_read_only"`
			MultiConn     bool     `json:"can_multi_conn"`
			Contexts      []string `json:"contexts"`
			PreferredSize int64    `json:"block_size_preferred"`
			MaximumSize   int64    `json:"block_size_maximum"`
		} `json:"exports"`
	}
	if err := json.Unmarshal(out, &info); err != nil || len(info.Exports) != 1 {
		t.Fatalf("nbdinfo --json: %v\n%s", err, out)
	}
	e := info.Exports[0]
	if info.Protocol != "newstyle-fixed" || e.Size != 24<<20 || !e.ReadOnly || !e.MultiConn ||
		e.PreferredSize != 1<<20 || e.MaximumSize != MaxRequest || !contains(e.Contexts, "base:allocation") {
		t.Errorf("nbdinfo reports %s", out)
	}
	mapOut, err := exec.Command(nbdinfo, "--map", uri).CombinedOutput()
	if err != nil {
		t.Fatalf("nbdinfo --map: %v\n%s", err, mapOut)
	}
	want := []string{
		"0 4194304 0 data",
		"4194304 8388608 3 hole,zero",
		"12582912 1048576 0 data",
		"13631488 11534336 3 hole,zero",
	}
	if got := strings.Fields(string(mapOut)); strings.Join(got, " ") != strings.Join(strings.Fields(strings.Join(want, " ")), " ") {
		t.Errorf("nbdinfo --map:\n%s\nwant\n%s", mapOut, strings.Join(want, "\n"))
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestNbdcopyAndQemuImgReadTheExport(t *testing.T) {
	nbdcopy := testutil.RequireTool(t, "nbdcopy")
	data := testDisk()
	uri := serveDevice(t, &memDevice{data: data, blockSize: 1 << 20}, WithMaxConnections(8))
	dst := filepath.Join(t.TempDir(), "copy.raw")
	// --connections=4 --requests=16 exercise multi-conn and requests in flight.
	if out, err := exec.Command(nbdcopy, "--connections=4", "--requests=16", uri, dst).CombinedOutput(); err != nil {
		t.Fatalf("nbdcopy: %v\n%s", err, out)
	}
	if got := testutil.SHA256File(t, dst); got != sha(data) {
		t.Errorf("nbdcopy copy has sha256 %s, the device %s", got, sha(data))
	}
	testutil.QemuImg(t, "compare", "-f", "raw", "-F", "raw", uri, dst)
}

func TestFailedReadIsEIOForThatRangeOnly(t *testing.T) {
	qemuIO := testutil.RequireTool(t, "qemu-io")
	uri := serveDevice(t, &memDevice{data: testDisk(), blockSize: 1 << 20, badOff: 1 << 20, badLen: 4096})
	read := func(r string) (string, error) {
		out, err := exec.Command(qemuIO, "-r", "-f", "raw", "-c", "read "+r, uri).CombinedOutput()
		return string(out), err
	}
	if out, _ := read("1M 64k"); !strings.Contains(out, "Input/output error") {
		t.Errorf("read over the bad range succeeded: %s", out)
	}
	for _, r := range []string{"0 1M", "1052672 3M", "12M 1M"} {
		if out, err := read(r); err != nil || strings.Contains(out, "error") {
			t.Errorf("read %s: %v %s", r, err, out)
		}
	}
}

func TestWritableExportTakesWrites(t *testing.T) {
	qemuIO := testutil.RequireTool(t, "qemu-io")
	nbdinfo := testutil.RequireTool(t, "nbdinfo")
	dev := &memDevice{data: testDisk(), blockSize: 1 << 20}
	uri := serveDevice(t, rwDevice{dev})
	if out, err := exec.Command(nbdinfo, "--can", "write", uri).CombinedOutput(); err != nil {
		t.Fatalf("nbdinfo --can write: %v %s", err, out)
	}
	out, err := exec.Command(qemuIO, "-f", "raw", "-c", "write -P 0x5a 5M 64k", "-c", "write -z 0 4k", "-c", "flush", uri).CombinedOutput()
	if err != nil || strings.Contains(string(out), "error") {
		t.Fatalf("qemu-io: %v %s", err, out)
	}
	dev.mu.Lock()
	defer dev.mu.Unlock()
	if !bytes.Equal(dev.data[5<<20:5<<20+64<<10], bytes.Repeat([]byte{0x5a}, 64<<10)) || !isZero(dev.data[:4096]) {
		t.Error("the writes did not reach the device")
	}
}

func TestHostileClientInput(t *testing.T) {
	uri := serveDevice(t, &memDevice{data: testDisk(), blockSize: 1 << 20})
	sock := strings.TrimPrefix(uri, "nbd+unix:///?socket=")
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	greeting := make([]byte, 18)
	if _, err := io.ReadFull(conn, greeting); err != nil {
		t.Fatal(err)
	}
	// Fixed newstyle, then an option claiming 1 GiB of data: the server refuses
	// it with NBD_REP_ERR_TOO_BIG and hangs up instead of reading or allocating it.
	msg := []byte{0, 0, 0, 1, 'I', 'H', 'A', 'V', 'E', 'O', 'P', 'T', 0, 0, 0, 7, 0x40, 0, 0, 0}
	if _, err := conn.Write(msg); err != nil {
		t.Fatal(err)
	}
	reply := make([]byte, 20)
	if _, err := io.ReadFull(conn, reply); err != nil {
		t.Fatal(err)
	}
	if typ := binary.BigEndian.Uint32(reply[12:]); typ != repErrTooBig {
		t.Errorf("reply type %#x, want NBD_REP_ERR_TOO_BIG", typ)
	}
	if _, err := io.ReadFull(conn, make([]byte, binary.BigEndian.Uint32(reply[16:]))); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := conn.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("connection still open after an oversized option: read %d bytes, %v", n, err)
	}
}

func TestExportNamesAndList(t *testing.T) {
	nbdinfo := testutil.RequireTool(t, "nbdinfo")
	uri := serveDevice(t, &memDevice{data: testDisk(), blockSize: 1 << 20}, WithExportName("vm1"))
	sock := strings.TrimPrefix(uri, "nbd+unix:///?socket=")
	out, err := exec.Command(nbdinfo, "--list", "--json", uri).CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"export-name": "vm1"`) {
		t.Errorf("nbdinfo --list: %v\n%s", err, out)
	}
	for name, ok := range map[string]bool{"vm1": true, "": true, "vm2": false} {
		out, err := exec.Command(nbdinfo, "--size", "nbd+unix:///"+name+"?socket="+sock).CombinedOutput()
		if got := err == nil && strings.TrimSpace(string(out)) == "25165824"; got != ok {
			t.Errorf("export %q: served %t, want %t (%v %s)", name, got, ok, err, out)
		}
	}
}
