package nbd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/blockferry/blockferry/backends"
	"github.com/blockferry/blockferry/internal/testutil"
)

const (
	kib = int64(1) << 10
	mib = int64(1) << 20
)

// bitmapImage builds a 16 MiB qcow2 with data written before and after adding the
// dirty bitmap "b0", and returns it with a raw copy of its contents. Writes are
// 64 KiB aligned, the bitmap's and the clusters' granularity, so that expected
// extents are exact.
func bitmapImage(t *testing.T) (image, raw string) {
	dir := t.TempDir()
	image, raw = filepath.Join(dir, "disk.qcow2"), filepath.Join(dir, "disk.raw")
	testutil.MakeQcow2(t, image, 16*mib)
	testutil.QemuIO(t, image, "write -P 0x11 0 1M", "write -P 0x33 2M 64k")
	testutil.AddBitmap(t, image, "b0")
	testutil.QemuIO(t, image,
		"write -P 0x22 4M 512k",
		"write -z 2M 64k", // data before the bitmap, zeroed after: dirty and zero
		"write -z 8M 1M",  // zeroes over a hole: dirty and zero
		"write -P 0x44 12M 64k",
	)
	testutil.ConvertToRaw(t, image, raw)
	return image, raw
}

// allExtents walks the whole source as a backup would, joining extents that a
// window boundary split.
func allExtents(t *testing.T, s backends.Source) []backends.Extent {
	t.Helper()
	var out []backends.Extent
	for off := int64(0); off < s.Size(); {
		ext, err := s.Extents(context.Background(), off, s.Size()-off)
		if err != nil {
			t.Fatal(err)
		}
		if len(ext) == 0 || ext[0].Start != off {
			t.Fatalf("Extents(%d) = %v: must start at the window", off, ext)
		}
		for _, e := range ext {
			if e.Length <= 0 {
				t.Fatalf("empty extent %+v", e)
			}
			if n := len(out); n > 0 && out[n-1].End() != e.Start {
				t.Fatalf("gap between %+v and %+v", out[n-1], e)
			}
			if n := len(out); n > 0 && out[n-1].Dirty == e.Dirty && out[n-1].Zero == e.Zero {
				out[n-1].Length += e.Length
			} else {
				out = append(out, e)
			}
		}
		off = out[len(out)-1].End()
	}
	return out
}

func TestSourceBitmapExtentsAndReads(t *testing.T) {
	image, raw := bitmapImage(t)
	uri, _ := testutil.ServeQemuNBD(t, image, "b0")

	s, err := backends.OpenSource(context.Background(), uri,
		backends.WithBitmap("b0"), backends.WithConnections(4), backends.WithMaxInFlight(3*mib))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	f, bitmap := s.(*source).exp.features, s.(*source).bitmap
	if bitmap == "" || !f.allocation || !f.readOnly {
		t.Errorf("features = %+v, bitmap %q; want bitmap, allocation, read-only", f, bitmap)
	}
	// qemu-nbd advertises multi-conn when it allows several clients (--shared);
	// the extra connections join in the background.
	if n := waitConns(s, 4); !f.multiConn || n != 4 {
		t.Errorf("multi-conn %v, %d connections; want true, 4", f.multiConn, n)
	}
	if s.Size() != 16*mib {
		t.Fatalf("size %d", s.Size())
	}

	want := []backends.Extent{
		{Start: 0, Length: 1 * mib, Dirty: false, Zero: false},
		{Start: 1 * mib, Length: 1 * mib, Dirty: false, Zero: true},
		{Start: 2 * mib, Length: 64 * kib, Dirty: true, Zero: true},
		{Start: 2*mib + 64*kib, Length: 2*mib - 64*kib, Dirty: false, Zero: true},
		{Start: 4 * mib, Length: 512 * kib, Dirty: true, Zero: false},
		{Start: 4*mib + 512*kib, Length: 3*mib + 512*kib, Dirty: false, Zero: true},
		{Start: 8 * mib, Length: 1 * mib, Dirty: true, Zero: true},
		{Start: 9 * mib, Length: 3 * mib, Dirty: false, Zero: true},
		{Start: 12 * mib, Length: 64 * kib, Dirty: true, Zero: false},
		{Start: 12*mib + 64*kib, Length: 4*mib - 64*kib, Dirty: false, Zero: true},
	}
	if got := allExtents(t, s); !equalExtents(got, want) {
		t.Errorf("extents:\n got %+v\nwant %+v", got, want)
	}

	// A window inside the image starts where asked and stays inside it.
	ext, err := s.Extents(context.Background(), 4*mib+256*kib, 1*mib)
	if err != nil {
		t.Fatal(err)
	}
	if ext[0] != (backends.Extent{Start: 4*mib + 256*kib, Length: 256 * kib, Dirty: true}) || ext[len(ext)-1].End() > 5*mib+256*kib {
		t.Errorf("window extents %+v", ext)
	}
	if ext, err := s.Extents(context.Background(), s.Size(), mib); err != nil || ext != nil {
		t.Errorf("extents past the end = %v, %v; want nothing", ext, err)
	}

	wantData, err := os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	if got := readConcurrently(t, s, 8, 768*kib); !bytes.Equal(got, wantData) {
		t.Error("concurrent reads differ from qemu-img convert's copy")
	}

	// Reading across the end returns what is there and io.EOF.
	buf := make([]byte, mib)
	n, err := s.ReadAt(context.Background(), buf, s.Size()-100*kib)
	if n != int(100*kib) || err != io.EOF || !bytes.Equal(buf[:n], wantData[len(wantData)-n:]) {
		t.Errorf("ReadAt across the end = %d, %v", n, err)
	}
}

// readConcurrently reads the whole source in chunks from several goroutines.
func readConcurrently(t *testing.T, s backends.Source, workers int, chunk int64) []byte {
	t.Helper()
	out := make([]byte, s.Size())
	offs := make(chan int64)
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for range workers {
		wg.Go(func() {
			for off := range offs {
				end := min(off+chunk, s.Size())
				if n, err := s.ReadAt(context.Background(), out[off:end], off); err != nil || n != int(end-off) {
					errs <- err
					return
				}
			}
		})
	}
	for off := int64(0); off < s.Size(); off += chunk {
		offs <- off
	}
	close(offs)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent ReadAt: %v", err)
	}
	return out
}

func equalExtents(a, b []backends.Extent) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestSourceWithoutBitmapIsAllDirty(t *testing.T) {
	image, _ := bitmapImage(t)
	// One client at a time: qemu-nbd does not advertise multi-conn.
	uri, _ := testutil.ServeQemuNBD(t, image, "", "--shared=1")
	s, err := backends.OpenSource(context.Background(), uri, backends.WithConnections(4))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if f, bitmap := s.(*source).exp.features, s.(*source).bitmap; bitmap != "" || f.multiConn {
		t.Errorf("features %+v, bitmap %q: want no bitmap, no multi-conn", f, bitmap)
	}
	if n := len(s.(*source).pool.all()); n != 1 {
		t.Errorf("%d connections without multi-conn, want 1", n)
	}
	want := []backends.Extent{
		{Start: 0, Length: 1 * mib, Dirty: true},
		{Start: 1 * mib, Length: 3 * mib, Dirty: true, Zero: true},
		{Start: 4 * mib, Length: 512 * kib, Dirty: true},
		{Start: 4*mib + 512*kib, Length: 7*mib + 512*kib, Dirty: true, Zero: true},
		{Start: 12 * mib, Length: 64 * kib, Dirty: true},
		{Start: 12*mib + 64*kib, Length: 4*mib - 64*kib, Dirty: true, Zero: true},
	}
	if got := allExtents(t, s); !equalExtents(got, want) {
		t.Errorf("extents:\n got %+v\nwant %+v", got, want)
	}
}

func TestSourceOpenErrors(t *testing.T) {
	image, _ := bitmapImage(t)
	uri, _ := testutil.ServeQemuNBD(t, image, "b0")
	ctx := context.Background()

	if _, err := backends.OpenSource(ctx, uri, backends.WithBitmap("nope")); !errors.Is(err, backends.ErrNoBitmap) {
		t.Errorf("unknown bitmap: %v, want ErrNoBitmap", err)
	}

	missing := "nbd+unix:///?socket=" + filepath.Join(t.TempDir(), "missing.sock")
	if _, err := backends.OpenSource(ctx, missing); !errors.Is(err, backends.ErrUnreachable) {
		t.Errorf("missing socket: %v, want ErrUnreachable", err)
	}

	// A port that just stopped listening refuses connections.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	if _, err := backends.OpenTarget(ctx, "nbd://"+addr); !errors.Is(err, backends.ErrUnreachable) {
		t.Errorf("refused: %v, want ErrUnreachable", err)
	}

	if _, err := backends.OpenTarget(ctx, uri); err == nil {
		t.Error("opened a read-only export as a target")
	}
}

func TestSourceWithoutBlockStatus(t *testing.T) {
	// Without structured replies the server can negotiate no meta context.
	uri, _ := testutil.ServeNbdkit(t, "--no-sr", "memory", "size=4M")
	s, err := backends.OpenSource(context.Background(), uri)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.(*source).exp.features.allocation {
		t.Error("allocation without base:allocation")
	}
	ext, err := s.Extents(context.Background(), mib, 8*mib)
	want := []backends.Extent{{Start: mib, Length: 3 * mib, Dirty: true}}
	if err != nil || !equalExtents(ext, want) {
		t.Errorf("extents = %+v, %v; want %+v", ext, err, want)
	}
	if _, err := backends.OpenSource(context.Background(), uri, backends.WithBitmap("b0")); !errors.Is(err, backends.ErrNoBitmap) {
		t.Errorf("bitmap without meta contexts: %v, want ErrNoBitmap", err)
	}
}

func TestTargetRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name    string
		filters []string
		zero    bool
	}{
		{"write-zeroes", nil, true},
		{"zero-by-writing", []string{"nozero"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			uri, _ := testutil.ServeNbdkitMemory(t, "16M", tc.filters...)
			ctx := context.Background()
			if _, err := backends.OpenTarget(ctx, uri, backends.WithSize(32*mib)); !errors.Is(err, backends.ErrTooSmall) {
				t.Errorf("oversized restore: %v, want ErrTooSmall", err)
			}

			tg, err := backends.OpenTarget(ctx, uri, backends.WithSize(16*mib), backends.WithTargetConnections(3))
			if err != nil {
				t.Fatal(err)
			}
			if got := tg.(*target).exp.features.zero; got != tc.zero {
				t.Errorf("features.zero = %v, want %v", got, tc.zero)
			}
			want := make([]byte, 16*mib)
			_, _ = rand.NewChaCha8([32]byte{1}).Read(want)
			// Large unaligned writes (split into several commands) from several goroutines.
			var wg sync.WaitGroup
			for i := range int64(4) {
				wg.Go(func() {
					off := i*4*mib + 3
					end := min(off+4*mib, 16*mib)
					if n, err := tg.WriteAt(want[off:end], off); err != nil || n != int(end-off) {
						t.Errorf("WriteAt(%d) = %d, %v", off, n, err)
					}
				})
			}
			wg.Wait()
			if _, err := tg.WriteAt(want[:3], 0); err != nil {
				t.Fatal(err)
			}
			// Zero a range spanning several zero-write batches when emulated.
			zoff, zlen := int64(mib+17), int64(9*mib)
			if err := tg.Zero(ctx, zoff, zlen); err != nil {
				t.Fatal(err)
			}
			clear(want[zoff : zoff+zlen])
			if err := tg.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			if _, err := tg.WriteAt(make([]byte, 10), 16*mib-5); err == nil {
				t.Error("write past the end succeeded")
			}
			if err := tg.Close(); err != nil {
				t.Fatal(err)
			}

			s, err := backends.OpenSource(ctx, uri)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if got := readConcurrently(t, s, 8, 4*mib); !bytes.Equal(got, want) {
				t.Error("data read back differs from data written")
			}
		})
	}
}

func TestReadErrorsAreReported(t *testing.T) {
	// One read in five fails; writes go through, so the data is known.
	uri, _ := testutil.ServeNbdkitMemory(t, "8M", "error", "error-pread=EIO", "error-pread-rate=0.2")
	ctx := context.Background()
	tg, err := backends.OpenTarget(ctx, uri)
	if err != nil {
		t.Fatal(err)
	}
	want := bytes.Repeat([]byte("blockferry"), int(8*mib)/10+1)[:8*mib]
	if _, err := tg.WriteAt(want, 0); err != nil {
		t.Fatal(err)
	}
	if err := tg.Close(); err != nil {
		t.Fatal(err)
	}

	s, err := backends.OpenSource(ctx, uri)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	failures := 0
	buf := make([]byte, 256*kib)
	for i := range 64 {
		off := int64(i%32) * 256 * kib
		clear(buf)
		if _, err := s.ReadAt(context.Background(), buf, off); err != nil {
			failures++
			continue
		}
		if !bytes.Equal(buf, want[off:off+256*kib]) {
			t.Fatalf("read at %d returned wrong data without an error", off)
		}
	}
	if failures == 0 {
		t.Error("no read failed although the server fails one in five")
	}
}

func TestExtentsCancel(t *testing.T) {
	uri, _ := testutil.ServeNbdkitMemory(t, "4M", "delay", "delay-extents=1")
	s, err := backends.OpenSource(context.Background(), uri)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := s.Extents(ctx, 0, 4*mib); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Extents = %v, want deadline exceeded", err)
	}
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Errorf("Extents took %v after cancellation", d)
	}
	if err := s.Close(); err != nil {
		t.Error(err)
	}
	if _, err := s.ReadAt(context.Background(), make([]byte, 10), 0); err == nil {
		t.Error("ReadAt after Close succeeded")
	}
}

func TestMergeExtents(t *testing.T) {
	const zero, hole = 2, 1
	for _, tc := range []struct {
		name          string
		alloc, bitmap []uint32
		length        int64
		want          []backends.Extent
	}{
		{
			name:   "split at both",
			alloc:  []uint32{100, 0, 100, hole | zero},
			bitmap: []uint32{50, 0, 100, 1, 50, 0},
			length: 200,
			want: []backends.Extent{
				{Start: 1000, Length: 50},
				{Start: 1050, Length: 50, Dirty: true},
				{Start: 1100, Length: 50, Dirty: true, Zero: true},
				{Start: 1150, Length: 50, Zero: true},
			},
		},
		{
			name:   "stops at the shorter reply",
			alloc:  []uint32{300, 0},
			bitmap: []uint32{120, 1},
			length: 300,
			want:   []backends.Extent{{Start: 1000, Length: 120, Dirty: true}},
		},
		{
			name:   "clipped to the window, equal neighbours joined",
			alloc:  []uint32{10, zero, 10, zero | hole, 500, 0},
			length: 40,
			want: []backends.Extent{
				{Start: 1000, Length: 20, Dirty: true, Zero: true},
				{Start: 1020, Length: 20, Dirty: true},
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := mergeExtents(1000, tc.length, tc.alloc, tc.bitmap, "a", "b")
			if err != nil || !equalExtents(got, tc.want) {
				t.Errorf("got %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
	for _, reply := range [][]uint32{{}, {0, 0, 0, 1}} {
		if _, err := mergeExtents(0, 10, reply, nil, "a", "b"); !errors.Is(err, errProtocol) {
			t.Errorf("reply %v: %v, want %v", reply, err, errProtocol)
		}
	}
}

// BenchmarkReadAt reads a 64 MiB export in 4 MiB chunks from 8 goroutines, the
// backup engine's pattern, over one connection and over four.
func BenchmarkReadAt(b *testing.B) {
	for _, conns := range []int{1, 4} {
		b.Run(fmt.Sprintf("conns=%d", conns), func(b *testing.B) {
			uri, _ := testutil.ServeNbdkit(b, "--threads=8", "pattern", "size=64M")
			s, err := backends.OpenSource(context.Background(), uri, backends.WithConnections(conns))
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			b.SetBytes(s.Size())
			for b.Loop() {
				var wg sync.WaitGroup
				offs := make(chan int64)
				for range 8 {
					wg.Go(func() {
						buf := make([]byte, 4*mib)
						for off := range offs {
							if _, err := s.ReadAt(context.Background(), buf, off); err != nil {
								b.Error(err)
							}
						}
					})
				}
				for off := int64(0); off < s.Size(); off += 4 * mib {
					offs <- off
				}
				close(offs)
				wg.Wait()
			}
		})
	}
}

// readsDuring starts 8 goroutines reading 1 MiB chunks in a loop, runs stop, and
// returns the errors the reads ended with. It fails the test if a read hangs.
func readsDuring(t *testing.T, s backends.Source, stop func()) []error {
	t.Helper()
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Go(func() {
			buf := make([]byte, mib)
			for {
				if _, err := s.ReadAt(context.Background(), buf, int64(i)*mib%s.Size()); err != nil {
					errs[i] = err
					return
				}
			}
		})
	}
	time.Sleep(100 * time.Millisecond)
	stop()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("reads hang")
	}
	return errs
}

func TestCloseDuringReads(t *testing.T) {
	uri, _ := testutil.ServeNbdkitMemory(t, "8M", "delay", "delay-read=20ms")
	s, err := backends.OpenSource(context.Background(), uri, backends.WithConnections(2))
	if err != nil {
		t.Fatal(err)
	}
	// Reads cut short fail one way or another (closed, or refused by libnbd after
	// the disconnect was sent); what matters is that none hangs or crashes.
	for _, err := range readsDuring(t, s, func() { _ = s.Close() }) {
		if err == nil {
			t.Error("read ended without an error")
		}
	}
	if _, err := s.ReadAt(context.Background(), make([]byte, 10), 0); !errors.Is(err, errClosed) {
		t.Errorf("read after Close: %v, want connection closed", err)
	}
}

func TestServerGoneFailsReads(t *testing.T) {
	image := filepath.Join(t.TempDir(), "disk.qcow2")
	testutil.MakeQcow2(t, image, 8*mib)
	for _, tc := range []struct {
		name  string
		serve func() (uri string, stop func())
	}{
		// qemu-nbd exits at once and drops its connections.
		{"qemu-nbd exits", func() (string, func()) { return testutil.ServeQemuNBD(t, image, "") }},
		// nbdkit answers ESHUTDOWN and waits for clients to disconnect, so it is
		// stopped in the background and exits once Close disconnected.
		{"nbdkit shuts down", func() (string, func()) {
			uri, stop := testutil.ServeNbdkitMemory(t, "8M", "delay", "delay-read=20ms")
			return uri, func() { go stop() }
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			uri, stop := tc.serve()
			s, err := backends.OpenSource(context.Background(), uri, backends.WithConnections(2))
			if err != nil {
				t.Fatal(err)
			}
			for _, err := range readsDuring(t, s, stop) {
				if err == nil {
					t.Error("read ended without an error")
				}
			}
			if _, err := s.ReadAt(context.Background(), make([]byte, 10), 0); err == nil {
				t.Error("read after the server went away succeeded")
			}
			if _, err := s.Extents(context.Background(), 0, mib); err == nil {
				t.Error("extents after the server went away succeeded")
			}
			closed := make(chan error, 1)
			go func() { closed <- s.Close() }()
			select {
			case <-closed:
			case <-time.After(5 * time.Second):
				t.Fatal("Close hangs after the server went away")
			}
		})
	}
}

// waitConns waits up to 10 s until the source has want connections, and returns
// how many it has.
func waitConns(s backends.Source, want int) int {
	p := s.(*source).pool
	for deadline := time.Now().Add(10 * time.Second); len(p.all()) < want && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	return len(p.all())
}

// TestClientLimit: an export that takes fewer clients than a source would like to
// open (qemu-nbd --shared=N advertises multi-conn but does not negotiate with
// client N+1 until another leaves) opens at once and works with the connections
// it can get, and a source waiting for a connection at the limit gives up when
// its context ends instead of hanging.
func TestClientLimit(t *testing.T) {
	image, _ := bitmapImage(t)
	uri, _ := testutil.ServeQemuNBD(t, image, "", "--shared=2") // the last --shared wins
	ctx := context.Background()
	start := time.Now()
	a, err := backends.OpenSource(ctx, uri, backends.WithConnections(4))
	if err != nil {
		t.Fatalf("open with a client limit of 2: %v", err)
	}
	defer a.Close()
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("open took %v", d)
	}
	buf := make([]byte, 1<<20)
	if _, err := a.ReadAt(context.Background(), buf, 0); err != nil {
		t.Fatalf("read: %v", err)
	}
	// The second connection joins; the third waits in vain and is given up.
	if n := waitConns(a, 2); n != 2 {
		t.Fatalf("%d connections, want the 2 the server allows", n)
	}

	// Both connections are a's: another source waits, until its context ends.
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	start = time.Now()
	if b, err := backends.OpenSource(short, uri); err == nil {
		b.Close()
		t.Fatal("opened a source past the client limit")
	} else if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("open past the client limit: %v, want the context's deadline", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("open past the client limit returned after %v, not when its context ended", d)
	}
	a.Close()
	b, err := backends.OpenSource(ctx, uri)
	if err != nil {
		t.Fatalf("open after the first source closed: %v", err)
	}
	b.Close()
}

// TestReadEndsWithItsContext: the commands of a read not yet sent are dropped when
// its context ends, so a cancelled job does not wait for the whole read.
func TestReadEndsWithItsContext(t *testing.T) {
	uri, _ := testutil.ServeNbdkitMemory(t, "16M", "delay", "delay-read=20ms")
	// One command in flight at a time: the 16 MiB read is 64 commands, 1.3 s.
	s, err := backends.OpenSource(context.Background(), uri, backends.WithConnections(1), backends.WithMaxInFlight(maxReadSize))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	buf := make([]byte, 16*mib)

	ended, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.ReadAt(ended, buf, 0); !errors.Is(err, context.Canceled) {
		t.Errorf("read with an ended context: %v, want context.Canceled", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := s.ReadAt(ctx, buf, 0); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("read whose context ended: %v, want context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 1500*time.Millisecond {
		t.Errorf("read took %v after its context ended at 100ms", d)
	}
	if n, err := s.ReadAt(context.Background(), buf[:mib], 0); err != nil || n != int(mib) {
		t.Errorf("read after the dropped ones = %d, %v", n, err)
	}
}

// TestStoppedServerReleasesAbandonedRequests: a server that stops answering (the
// qemu-nbd process paused with SIGSTOP, as a wedged hypervisor export would be)
// holds no request, and no Close, past the grace its context's end gives it: a
// read whose context ends returns that end, a block status request too, and Close
// cuts the connections instead of waiting for answers that never come.
func TestStoppedServerReleasesAbandonedRequests(t *testing.T) {
	defer func(g time.Duration) { abandonGrace = g }(abandonGrace)
	abandonGrace = 300 * time.Millisecond
	s, pause := pausableExport(t, 2)
	pause()

	within := func(what string, limit time.Duration, f func() error, want error) {
		t.Helper()
		start := time.Now()
		if err := f(); !errors.Is(err, want) {
			t.Errorf("%s on a stopped server: %v, want %v", what, err, want)
		}
		if d := time.Since(start); d > limit {
			t.Errorf("%s on a stopped server took %v, want at most %v", what, d, limit)
		}
	}
	within("block status whose context ends after 200ms", time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		_, err := s.Extents(ctx, 32*mib, 32*mib)
		return err
	}, context.DeadlineExceeded)
	buf := make([]byte, 16*mib)
	within("a read whose context ends after 200ms", 2*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		_, err := s.ReadAt(ctx, buf, 0)
		return err
	}, context.DeadlineExceeded)
	within("a read after the connections were cut", time.Second, func() error {
		_, err := s.ReadAt(context.Background(), buf, 0)
		return err
	}, errNoAnswer)
	within("Close", 2*time.Second, s.Close, nil)
}

// pausableExport serves a 64 MiB qcow2 image (its first 32 MiB written) with
// qemu-nbd and opens it with conns connections; pause stops the server process
// (SIGSTOP) until the test ends.
func pausableExport(t *testing.T, conns int) (s backends.Source, pause func()) {
	t.Helper()
	img := filepath.Join(t.TempDir(), "disk.qcow2")
	testutil.MakeQcow2(t, img, 64*mib)
	testutil.QemuIO(t, img, "write -P 7 0 32M")
	uri, _ := testutil.ServeQemuNBD(t, img, "")
	s, err := backends.OpenSource(context.Background(), uri, backends.WithConnections(conns))
	if err != nil {
		t.Fatal(err)
	}
	server := processServing(t, strings.TrimPrefix(uri, "nbd+unix:///?socket="))
	return s, func() {
		t.Helper()
		if err := server.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = server.Signal(syscall.SIGCONT) })
	}
}

// processServing is the process that listens on the Unix socket sock.
func processServing(t *testing.T, sock string) *os.Process {
	t.Helper()
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		cmdline, err := os.ReadFile(p)
		if err != nil || !bytes.Contains(cmdline, []byte("--socket="+sock+"\x00")) {
			continue
		}
		var pid int
		if _, err := fmt.Sscanf(p, "/proc/%d/cmdline", &pid); err != nil {
			t.Fatal(err)
		}
		proc, err := os.FindProcess(pid)
		if err != nil {
			t.Fatal(err)
		}
		return proc
	}
	t.Fatalf("no process serves %s", sock)
	return nil
}

// TestStalledServerIsCut: a server that answers none of the commands in flight
// for stallTimeout (qemu-nbd paused) has its connection cut although nobody gave
// up on them: the read fails with a timeout, which a job retries, instead of
// holding the job until somebody cancels it.
func TestStalledServerIsCut(t *testing.T) {
	defer func(d time.Duration) { stallTimeout = d }(stallTimeout)
	stallTimeout = 500 * time.Millisecond
	s, pause := pausableExport(t, 1)
	defer s.Close()
	buf := make([]byte, 16*mib)
	if _, err := s.ReadAt(context.Background(), buf, 0); err != nil {
		t.Fatalf("read from the running server: %v", err)
	}
	time.Sleep(2 * stallTimeout) // idle is not stalled: nothing is in flight
	pause()
	start := time.Now()
	_, err := s.ReadAt(context.Background(), buf, 0)
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.Is(err, errStalled) {
		t.Errorf("read from the stopped server: %v, want a stall (os.ErrDeadlineExceeded)", err)
	}
	if d := time.Since(start); d < stallTimeout || d > stallTimeout+3*time.Second {
		t.Errorf("the read failed after %v, want about %v", d, stallTimeout)
	}
}
