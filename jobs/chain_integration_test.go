package jobs_test

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/blockferry/blockferry/internal/testutil"
	"github.com/blockferry/blockferry/jobs"
	"github.com/blockferry/blockferry/sinks/repository"
)

const (
	// The broken-chain disks are full of incompressible data, in small chunks, so
	// that "a fallback full uploads almost nothing" measures deduplication, not
	// compression.
	chainDiskSize  = 64 * mib
	chainChunkSize = 64 << 10
)

// chainDisk is a qcow2 of random data whose chain of backups a test breaks.
type chainDisk struct {
	*disk
	runner  *jobs.Runner
	repoDir string
	mu      sync.Mutex
	reasons []string // what the runner's fallback observer was told
}

func newChainDisk(t *testing.T) *chainDisk {
	d := &chainDisk{disk: newDisk(t), repoDir: filepath.Join(t.TempDir(), "repo")}
	raw := filepath.Join(d.dir, "random.raw")
	data := make([]byte, chainDiskSize)
	rand.NewChaCha8([32]byte{7}).Read(data)
	if err := os.WriteFile(raw, data, 0o600); err != nil {
		t.Fatal(err)
	}
	testutil.QemuImg(t, "convert", "-f", "raw", "-O", "qcow2", raw, d.image)
	os.Remove(raw)
	d.runner = jobs.NewRunner(jobs.WithDefaultRepository("file://"+d.repoDir), jobs.WithFallbackObserver(func(reason string) {
		d.mu.Lock()
		d.reasons = append(d.reasons, reason)
		d.mu.Unlock()
	}))
	return d
}

// chainJob is one backup job of a chain: what it asks for and what the NBD
// server exports.
type chainJob struct {
	id, bitmap, parent, checkpoint, since, policy string
	// exportBitmap is the bitmap qemu-nbd exports; the job's own when empty,
	// none when "-".
	exportBitmap string
}

func (d *chainDisk) run(j chainJob) (*repository.Manifest, error) {
	d.t.Helper()
	export := j.exportBitmap
	switch export {
	case "":
		export = j.bitmap
	case "-":
		export = ""
	}
	uri, stop := testutil.ServeQemuNBD(d.t, d.image, export)
	defer stop()
	s := backupSpec(j.id, uri, j.bitmap, j.parent)
	s.Options.ChunkSize, s.Options.OnBrokenChain = chainChunkSize, j.policy
	s.Checkpoint, s.SinceCheckpoint = j.checkpoint, j.since
	res, err := d.runner.Run(context.Background(), s, nil)
	return res.Backup, err
}

func (d *chainDisk) mustRun(j chainJob) *repository.Manifest {
	d.t.Helper()
	m, err := d.run(j)
	if err != nil {
		d.t.Fatalf("backup %s: %v", j.id, err)
	}
	return m
}

// restoredSum restores a backup into a new raw file and returns its sha256.
func (d *chainDisk) restoredSum(m *repository.Manifest) string {
	d.t.Helper()
	out := filepath.Join(d.t.TempDir(), "restored.raw")
	spec := jobs.Spec{SpecVersion: jobs.SpecVersion, ID: "restore-" + m.ID, Kind: jobs.KindRestore, Backup: m.ID, Target: &jobs.Endpoint{URI: "file://" + out}}
	if _, err := d.runner.Run(context.Background(), spec, nil); err != nil {
		d.t.Fatalf("restore %s: %v", m.ID, err)
	}
	return testutil.SHA256File(d.t, out)
}

// smallWrites change three 4 KiB blocks in three chunk positions: 0.02% of the disk.
var smallWrites = []write{{1*mib + 4096, 4096, 0x41}, {20 * mib, 4096, 0x42}, {50*mib + 8192, 4096, 0x43}}

// TestBrokenChainFallsBackToFull breaks an incremental's chain in each way a chain
// breaks. With on_broken_chain full (the default) the job makes a full backup that
// says why, restores the disk bit for bit and uploads next to nothing, since the
// repository holds the disk's chunks already; with fail the job fails naming the
// reason and writes no backup.
func TestBrokenChainFallsBackToFull(t *testing.T) {
	cases := []struct {
		name   string
		reason string
		code   string
		// breakChain changes the disk and the repository after the full backup
		// (checkpoint c1, bitmap b1 created with it) and returns the incremental
		// job that now meets a broken chain.
		breakChain func(t *testing.T, d *chainDisk, full *repository.Manifest) chainJob
	}{
		{"bitmap missing", jobs.FallbackBitmapMissing, jobs.CodeBitmapNotFound, func(t *testing.T, d *chainDisk, full *repository.Manifest) chainJob {
			d.write(smallWrites...)
			// The VM was restarted and its bitmap is gone: the export has none.
			return chainJob{bitmap: "b1", parent: full.ID, since: "c1", exportBitmap: "-"}
		}},
		{"parent forgotten", jobs.FallbackParentMissing, jobs.CodeParentNotFound, func(t *testing.T, d *chainDisk, full *repository.Manifest) chainJob {
			d.write(smallWrites...)
			if err := os.Remove(filepath.Join(d.repoDir, "backups", full.ID)); err != nil {
				t.Fatal(err)
			}
			return chainJob{bitmap: "b1", parent: full.ID, since: "c1"}
		}},
		{"disk resized", jobs.FallbackDiskResized, jobs.CodeParentMismatch, func(t *testing.T, d *chainDisk, full *repository.Manifest) chainJob {
			testutil.QemuImg(t, "resize", "-q", d.image, "+1M")
			d.write(append(slices.Clone(smallWrites), write{chainDiskSize + 4096, 4096, 0x44})...)
			return chainJob{bitmap: "b1", parent: full.ID, since: "c1"}
		}},
		{"wrong parent for a valid bitmap", jobs.FallbackCheckpointMismatch, jobs.CodeCheckpoint, func(t *testing.T, d *chainDisk, full *repository.Manifest) chainJob {
			d.write(write{30 * mib, 4096, 0x45})
			testutil.AddBitmap(t, d.image, "b2")
			inc := d.mustRun(chainJob{id: "inc1", bitmap: "b1", parent: full.ID, checkpoint: "c2", since: "c1"})
			if inc.Kind != "incremental" || inc.FallbackReason != "" || inc.Checkpoint != "c2" {
				t.Fatalf("a sound incremental: kind %s, fallback %q, checkpoint %q", inc.Kind, inc.FallbackReason, inc.Checkpoint)
			}
			d.write(smallWrites...)
			// b2 counts from c2 (inc1), but the orchestrator pairs it with the full:
			// a backup of the full plus b2's changes would lack inc1's write.
			return chainJob{bitmap: "b2", parent: full.ID, since: "c2"}
		}},
		{"bitmap re-created empty under its old name", jobs.FallbackCheckpointMismatch, jobs.CodeCheckpoint, func(t *testing.T, d *chainDisk, full *repository.Manifest) chainJob {
			d.write(smallWrites[:1]...)
			// The bitmap was lost and re-created, empty, under its old name: it now
			// counts from a new checkpoint, and misses the write above.
			testutil.QemuImg(t, "bitmap", "--remove", d.image, "b1")
			testutil.AddBitmap(t, d.image, "b1")
			d.write(smallWrites[1:]...)
			return chainJob{bitmap: "b1", parent: full.ID, since: "c1-recreated"}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := newChainDisk(t)
			testutil.AddBitmap(t, d.image, "b1")
			full := d.mustRun(chainJob{id: "full", checkpoint: "c1"})
			if full.Checkpoint != "c1" || full.Stats.BytesWritten < chainDiskSize/2 {
				t.Fatalf("full: checkpoint %q, %d bytes written", full.Checkpoint, full.Stats.BytesWritten)
			}
			job := c.breakChain(t, d, full)
			want := d.snapshot("now")

			job.id, job.checkpoint, job.policy = "fail", "c3", jobs.OnBrokenChainFail
			if _, err := d.run(job); err == nil {
				t.Fatal("on_broken_chain fail: no error")
			} else if f := jobs.Classify(err); f.Code != c.code || f.Retryable {
				t.Errorf("on_broken_chain fail: %+v, want code %s, permanent", f, c.code)
			}

			job.id, job.policy = "fallback", ""
			m := d.mustRun(job)
			if m.Kind != "full" || m.FallbackReason != c.reason || m.Parent != "" || m.Checkpoint != "c3" {
				t.Errorf("fallback: kind %s, reason %q, parent %q, checkpoint %q; want full, %s, none, c3", m.Kind, m.FallbackReason, m.Parent, m.Checkpoint, c.reason)
			}
			if m.ChunkSize != chainChunkSize {
				t.Errorf("fallback: chunk size %d, want the parent's %d", m.ChunkSize, chainChunkSize)
			}
			if m.Stats.BytesWritten*100 >= chainDiskSize {
				t.Errorf("fallback: %d bytes uploaded, want less than 1%% of the %d of the disk", m.Stats.BytesWritten, int64(chainDiskSize))
			}
			if got := d.restoredSum(m); got != want {
				t.Errorf("restore of the fallback full: sha256 %s, want %s", got, want)
			}
			if !slices.Equal(d.reasons, []string{c.reason}) {
				t.Errorf("fallbacks observed: %v, want [%s]", d.reasons, c.reason)
			}
		})
	}
}
