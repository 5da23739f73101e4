package jobs_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"libguestfs.org/libnbd"

	"github.com/blockferry/blockferry/internal/testutil"
	"github.com/blockferry/blockferry/sinks/repository"
)

// guestHotRegion is where the guest writes: the first quarter of the disk, so that
// an incremental that uses its bitmap reads at most that much.
const guestHotRegion = chainDiskSize / 4

// guestWriter stands for a running VM: it keeps writing to the disk's hot region
// through the daemon's writable export, with data, zero writes and discards, in
// 4 KiB to 256 KiB pieces, until stopped.
type guestWriter struct {
	t      *testing.T
	mu     sync.Mutex // held for each write; pause takes it to hold the guest still
	writes atomic.Int64
	done   chan struct{}
	exited chan error
}

func startGuestWriter(t *testing.T, uri string, region int64) *guestWriter {
	h, err := libnbd.Create()
	if err != nil {
		t.Fatal(err)
	}
	if err := h.ConnectUri(uri); err != nil {
		h.Close()
		t.Fatalf("guest connect: %v", err)
	}
	w := &guestWriter{t: t, done: make(chan struct{}), exited: make(chan error, 1)}
	go func() {
		defer h.Close()
		w.exited <- w.loop(h, region)
	}()
	t.Cleanup(func() { w.stop() })
	return w
}

func (w *guestWriter) loop(h *libnbd.Libnbd, region int64) error {
	rng := rand.New(rand.NewChaCha8([32]byte{12}))
	buf := make([]byte, 256<<10)
	for {
		select {
		case <-w.done:
			return nil
		case <-time.After(time.Millisecond):
		}
		n := uint64(4096 * (1 + rng.IntN(64)))
		off := uint64(4096 * rng.Int64N((region-int64(n))/4096+1))
		var err error
		w.mu.Lock()
		switch op := rng.IntN(10); {
		case op < 6:
			for i := range buf[:n] {
				buf[i] = byte(rng.Uint32())
			}
			err = h.Pwrite(buf[:n], off, nil)
		case op < 8:
			err = h.Zero(n, off, nil)
		default:
			err = h.Trim(n, off, nil)
		}
		w.mu.Unlock()
		if err != nil {
			return err
		}
		w.writes.Add(1)
	}
}

func (w *guestWriter) pause()  { w.mu.Lock() }
func (w *guestWriter) resume() { w.mu.Unlock() }

// stop ends the writer and fails the test if one of its writes failed.
func (w *guestWriter) stop() {
	select {
	case <-w.done:
		return
	default:
	}
	close(w.done)
	if err := <-w.exited; err != nil {
		w.t.Errorf("guest write: %v", err)
	}
}

// liveBackup takes one pull-mode backup of the running disk as libvirt does and
// checks it: the frozen view equals the disk at the backup's point in time (the
// guest is held still for the instant of the transaction and no longer), does not
// move while the guest keeps writing during the backup, and is what the backup
// restores, bit for bit.
func liveBackup(t *testing.T, d *chainDisk, live *testutil.LiveDisk, w *guestWriter, job chainJob) *repository.Manifest {
	t.Helper()
	atPoint, b := func() (string, *testutil.PullBackup) {
		w.pause()
		defer w.resume() // also when the test fails here: the writer must be able to stop
		return testutil.ExportSHA256(t, live.GuestURI()), live.BeginBackup(job.checkpoint, job.since)
	}()
	writesBefore := w.writes.Load()

	frozen := testutil.ExportSHA256(t, b.URI())
	if frozen != atPoint {
		t.Errorf("%s: the fleecing export (sha256 %s) is not the disk at the backup's point in time (%s)", job.id, frozen, atPoint)
	}
	s := backupSpec(job.id, b.URI(), b.Bitmap(), job.parent)
	s.Options.ChunkSize = chainChunkSize
	s.Checkpoint, s.SinceCheckpoint = job.checkpoint, job.since
	res, err := d.runner.Run(context.Background(), s, nil)
	if err != nil {
		t.Fatalf("backup %s: %v", job.id, err)
	}
	if after := testutil.ExportSHA256(t, b.URI()); after != frozen {
		t.Errorf("%s: the fleecing export moved while the guest wrote: sha256 %s, then %s", job.id, frozen, after)
	}
	if w.writes.Load() == writesBefore {
		t.Errorf("%s: the guest wrote nothing during the backup", job.id)
	}
	b.End()
	if got := d.restoredSum(res.Backup); got != frozen {
		t.Errorf("%s: restore sha256 %s, want the fleecing export's %s", job.id, got, frozen)
	}
	return res.Backup
}

// TestLiveBackupAsLibvirtDoes backs up a disk that a guest keeps writing to,
// served by qemu-storage-daemon and driven over QMP as libvirt drives a running
// VM's QEMU for a pull-mode backup with checkpoints: a full, then two
// incrementals, each restoring the disk as it was at its point in time.
func TestLiveBackupAsLibvirtDoes(t *testing.T) {
	testutil.RequireTool(t, "qemu-storage-daemon")
	d := newChainDisk(t)
	live := testutil.StartLiveDisk(t, d.image, "vda")
	w := startGuestWriter(t, live.GuestURI(), guestHotRegion)

	full := liveBackup(t, d, live, w, chainJob{id: "full", checkpoint: "vm1-vda-c1"})
	if full.Kind != "full" || full.Checkpoint != "vm1-vda-c1" {
		t.Errorf("full: kind %s, checkpoint %q", full.Kind, full.Checkpoint)
	}
	parent := full
	for i, c := range []struct{ since, checkpoint string }{{"vm1-vda-c1", "vm1-vda-c2"}, {"vm1-vda-c2", "vm1-vda-c3"}} {
		// Let the guest write between the backups, as it does between cycles.
		for start := w.writes.Load(); w.writes.Load() < start+50; {
			time.Sleep(5 * time.Millisecond)
		}
		id := fmt.Sprintf("inc%d", i+1)
		inc := liveBackup(t, d, live, w, chainJob{id: id, parent: parent.ID, since: c.since, checkpoint: c.checkpoint})
		if inc.Kind != "incremental" || inc.FallbackReason != "" || inc.Parent != parent.ID || inc.Checkpoint != c.checkpoint {
			t.Errorf("%s: kind %s, fallback %q, parent %s, checkpoint %q; want an incremental of %s starting %s",
				id, inc.Kind, inc.FallbackReason, inc.Parent, inc.Checkpoint, parent.ID, c.checkpoint)
		}
		// The guest wrote only to its hot region, in whole chunks of it.
		if inc.Stats.BytesRead > guestHotRegion {
			t.Errorf("%s read %d bytes, more than the %d the guest writes to: the bitmap was not used", id, inc.Stats.BytesRead, int64(guestHotRegion))
		}
		parent = inc
	}
	w.stop()
	if len(d.reasons) != 0 {
		t.Errorf("fallbacks: %v, want none", d.reasons)
	}
}
