package jobs_test

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/blockferry/blockferry/jobs"
	"github.com/blockferry/blockferry/sinks"
	"github.com/blockferry/blockferry/sinks/repository"
)

// servedBackup backs up a raw disk and opens the backup again through a store
// that counts chunk reads; it returns the disk's bytes too.
func servedBackup(t *testing.T) (repo *repository.Repository, m *repository.Manifest, disk []byte, chunkGets *atomic.Int64) {
	t.Helper()
	path, _ := rawDisk(t, diskSize)
	return servedBackupOf(t, path)
}

// servedBackupOf is servedBackup of the raw disk at path.
func servedBackupOf(t *testing.T, path string) (repo *repository.Repository, m *repository.Manifest, disk []byte, chunkGets *atomic.Int64) {
	t.Helper()
	repoURI := "file://" + filepath.Join(t.TempDir(), "repo")
	m = fullBackupOfFile(t, jobs.NewRunner(jobs.WithDefaultRepository(repoURI)), path)
	disk, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	store, err := sinks.OpenStore(context.Background(), repoURI)
	if err != nil {
		t.Fatal(err)
	}
	chunkGets = &atomic.Int64{}
	store = sinks.Instrumented(store, func(_, op string, _ time.Duration, _ error) {
		if op == "get" {
			chunkGets.Add(1)
		}
	})
	if repo, err = repository.Open(context.Background(), store, nil); err != nil {
		t.Fatal(err)
	}
	chunkGets.Store(0) // the config
	return repo, m, disk, chunkGets
}

func TestBackupDeviceReadsTheDisk(t *testing.T) {
	repo, m, disk, _ := servedBackup(t)
	// A cache of two positions makes the readers below evict each other's.
	dev := jobs.NewBackupDevice(repo, m, jobs.WithDeviceCache(2*chunkSize), jobs.WithDeviceConcurrency(3))
	if dev.Size() != int64(len(disk)) {
		t.Fatalf("size %d, want %d", dev.Size(), len(disk))
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			for range 40 {
				off := rng.Int64N(int64(len(disk)))
				p := make([]byte, min(rng.Int64N(3*chunkSize)+1, int64(len(disk))-off))
				if err := dev.ReadAt(context.Background(), p, off); err != nil {
					t.Errorf("read %d at %d: %v", len(p), off, err)
					return
				}
				if !bytes.Equal(p, disk[off:off+int64(len(p))]) {
					t.Errorf("read %d at %d: wrong bytes", len(p), off)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := dev.ReadAt(context.Background(), make([]byte, 2), int64(len(disk))-1); err == nil {
		t.Error("a read past the end succeeded")
	}
}

func TestBackupDeviceFetchesOnlyWhatIsRead(t *testing.T) {
	repo, m, _, gets := servedBackup(t)
	dev := jobs.NewBackupDevice(repo, m, jobs.WithDeviceCache(2*chunkSize), jobs.WithDeviceReadAhead(0))
	read := func(off, n int64) int64 {
		t.Helper()
		before := gets.Load()
		if err := dev.ReadAt(context.Background(), make([]byte, n), off); err != nil {
			t.Fatal(err)
		}
		return gets.Load() - before
	}
	if n := read(chunkSize+200, 4096); n != 1 {
		t.Errorf("a 4 KiB read in one position fetched %d chunks", n)
	}
	if n := read(chunkSize, chunkSize); n != 0 {
		t.Errorf("reading a cached position again fetched %d chunks", n)
	}
	if n := read(8*chunkSize, 2*chunkSize); n != 0 {
		t.Errorf("reading zero positions fetched %d chunks", n)
	}
	if n := read(2*chunkSize-10, 20); n != 1 {
		t.Errorf("a read across two positions, one cached, fetched %d chunks", n)
	}
	read(3*chunkSize, 10) // evicts position 1, the least recently used
	if n := read(chunkSize, 10); n != 1 {
		t.Errorf("a position evicted from a two-position cache was fetched %d times", n)
	}
}

// TestBackupDeviceSequentialReadersShareTheCache reads the disk as nbdcopy does
// over four connections: four sequential readers, each through its own quarter
// in 256 KiB requests, slower than the fetches. Each reading ahead 8 positions
// would need 36 positions in a cache of 16 and evict positions before they are
// read; sharing the read-ahead and evicting positions read to their end first,
// every position is fetched once.
func TestBackupDeviceSequentialReadersShareTheCache(t *testing.T) {
	noise := make([]byte, 48*chunkSize) // 12 positions of data for each reader
	rand.NewChaCha8([32]byte{2}).Read(noise)
	path := filepath.Join(t.TempDir(), "noise.raw")
	if err := os.WriteFile(path, noise, 0o600); err != nil {
		t.Fatal(err)
	}
	repo, m, disk, gets := servedBackupOf(t, path)
	dev := jobs.NewBackupDevice(repo, m, jobs.WithDeviceCache(16*chunkSize), jobs.WithDeviceReadAhead(8))
	var wg sync.WaitGroup
	quarter := int64(len(disk)) / 4
	for r := range int64(4) {
		wg.Go(func() {
			end := min((r+1)*quarter, int64(len(disk)))
			if r == 3 {
				end = int64(len(disk))
			}
			for off := r * quarter; off < end; off += 256 << 10 {
				p := make([]byte, min(256<<10, end-off))
				if err := dev.ReadAt(context.Background(), p, off); err != nil {
					t.Errorf("read at %d: %v", off, err)
					return
				}
				if !bytes.Equal(p, disk[off:off+int64(len(p))]) {
					t.Errorf("read at %d: wrong bytes", off)
					return
				}
				time.Sleep(2 * time.Millisecond) // a client slower than the fetches, as nbdcopy writing a file
			}
		})
	}
	wg.Wait()
	var want int64
	for i := range m.Chunks {
		if !m.ReadsAsZero(i) {
			want++
		}
	}
	if got := gets.Load(); got != want {
		t.Errorf("the readers fetched %d chunks, want each of the %d positions with data once", got, want)
	}
}

func TestBackupDeviceExtentsFromTheManifest(t *testing.T) {
	repo, m, disk, gets := servedBackup(t)
	dev := jobs.NewBackupDevice(repo, m)
	extents, err := dev.Extents(context.Background(), 100, int64(len(disk)), 1<<16)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	at := int64(100)
	for _, e := range extents {
		zero := bytes.Count(disk[at:at+e.Length], []byte{0}) == int(e.Length)
		if e.Zero && !zero {
			t.Errorf("extent %d+%d is reported zero but holds data", at, e.Length)
		}
		kind := "data"
		if e.Zero {
			kind = "zero"
		}
		got = append(got, kind)
		at += e.Length
	}
	if at != int64(len(disk)) || gets.Load() != 0 {
		t.Errorf("extents end at %d of %d, after %d chunk reads", at, len(disk), gets.Load())
	}
	// rawDisk: data at 1-3 MiB, zeroes, data in the last 3 MiB.
	if want := "zero data zero data"; strings.Join(got, " ") != want {
		t.Errorf("extents %v, want %s", got, want)
	}
	// A limit stops the list early (an NBD reply takes 65536 descriptors, a
	// client may ask about 4 GiB): the first extents, whole.
	first, err := dev.Extents(context.Background(), 100, int64(len(disk)), 2)
	if err != nil || len(first) != 2 || first[0] != extents[0] || first[1] != extents[1] {
		t.Errorf("the first 2 extents: %v, %v; want %v", first, err, extents[:2])
	}
}
