package jobs_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	_ "github.com/blockferry/blockferry/backends/file"
	_ "github.com/blockferry/blockferry/backends/nbd"
	"github.com/blockferry/blockferry/internal/testutil"
	"github.com/blockferry/blockferry/jobs"
	"github.com/blockferry/blockferry/sinks"
	_ "github.com/blockferry/blockferry/sinks/file"
	"github.com/blockferry/blockferry/sinks/repository"
	_ "github.com/blockferry/blockferry/sinks/s3"
)

const (
	mib       = int64(1 << 20)
	chunkSize = 1 * mib
	// Not a multiple of the chunk size: the last chunk is short.
	diskSize = 24*mib + 512*1024
)

// write is one qemu-io write: a pattern byte, or zeroes when pattern < 0.
type write struct {
	off, length int64
	pattern     int
}

func (w write) cmd() string {
	if w.pattern < 0 {
		return fmt.Sprintf("write -z %d %d", w.off, w.length)
	}
	return fmt.Sprintf("write -P %d %d %d", w.pattern, w.off, w.length)
}

// chunksOf is the set of chunk positions a list of writes touches.
func chunksOf(ws []write) map[int]bool {
	out := map[int]bool{}
	for _, w := range ws {
		for c := w.off / chunkSize; c <= (w.off+w.length-1)/chunkSize; c++ {
			out[int(c)] = true
		}
	}
	return out
}

// disk is a qcow2 image under test, with the raw copies taken at each backup.
type disk struct {
	t     *testing.T
	dir   string
	image string
}

func newDisk(t *testing.T) *disk {
	testutil.RequireTool(t, "qemu-img")
	testutil.RequireTool(t, "qemu-nbd")
	testutil.RequireTool(t, "qemu-io")
	d := &disk{t: t, dir: t.TempDir()}
	d.image = filepath.Join(d.dir, "disk.qcow2")
	testutil.MakeQcow2(t, d.image, diskSize)
	return d
}

func (d *disk) write(ws ...write) {
	cmds := make([]string, len(ws))
	for i, w := range ws {
		cmds[i] = w.cmd()
	}
	testutil.QemuIO(d.t, d.image, cmds...)
}

// snapshot returns the sha256 of a raw copy of the image as it is now.
func (d *disk) snapshot(name string) string {
	raw := filepath.Join(d.dir, name+".raw")
	testutil.ConvertToRaw(d.t, d.image, raw)
	sum := testutil.SHA256File(d.t, raw)
	os.Remove(raw)
	return sum
}

func backupSpec(id, uri, bitmap, parent string) jobs.Spec {
	return jobs.Spec{
		SpecVersion: jobs.SpecVersion, ID: id, Kind: jobs.KindBackup, Disk: "vm1/vda",
		Source: &jobs.Endpoint{URI: uri, Bitmap: bitmap}, Parent: parent,
		Options: jobs.Options{ChunkSize: jobs.ByteSize(chunkSize), Concurrency: 4},
	}
}

// backup serves the image with qemu-nbd (exposing bitmap when set) and backs it up.
func (d *disk) backup(r *jobs.Runner, id, bitmap, parent string) *repository.Manifest {
	d.t.Helper()
	uri, stop := testutil.ServeQemuNBD(d.t, d.image, bitmap)
	defer stop()
	res, err := r.Run(context.Background(), backupSpec(id, uri, bitmap, parent), nil)
	if err != nil {
		d.t.Fatalf("backup %s: %v", id, err)
	}
	return res.Backup
}

func restoreSum(t *testing.T, r *jobs.Runner, backup string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "restored.raw")
	spec := jobs.Spec{SpecVersion: jobs.SpecVersion, ID: "restore-" + backup, Kind: jobs.KindRestore, Backup: backup, Target: &jobs.Endpoint{URI: "file://" + out}}
	res, err := r.Run(context.Background(), spec, nil)
	if err != nil {
		t.Fatalf("restore %s: %v", backup, err)
	}
	if res.Restore.BytesTotal != diskSize {
		t.Fatalf("restore %s: %d bytes, want %d", backup, res.Restore.BytesTotal, diskSize)
	}
	return testutil.SHA256File(t, out)
}

// repositories are the places every backup scenario runs against.
func repositories(t *testing.T) map[string]func(t *testing.T) string {
	return map[string]func(t *testing.T) string{
		"file": func(t *testing.T) string { return "file://" + filepath.Join(t.TempDir(), "repo") },
		"s3": func(t *testing.T) string {
			endpoint, ak, sk := testutil.StartS3(t)
			testutil.CreateBucket(t, endpoint, ak, sk, "backups")
			testutil.S3Env(t, ak, sk)
			return "s3://backups/bf?endpoint=" + endpoint + "&region=us-east-1"
		},
	}
}

// TestFullAndIncrementals is the product's core promise: a full backup and two
// incrementals of a qcow2 with persistent dirty bitmaps each restore bit for bit to
// the image as it was, and an incremental stores only the chunks that changed.
func TestFullAndIncrementals(t *testing.T) {
	for name, repoURI := range repositories(t) {
		t.Run(name, func(t *testing.T) {
			runner := jobs.NewRunner(jobs.WithDefaultRepository(repoURI(t)))
			d := newDisk(t)
			d.write(
				write{0, 3 * mib, 0x11},
				write{5*mib + 4096, 2 * mib, 0x22},
				write{10 * mib, 1 * mib, 0x11}, // same content as chunk 0: deduplicated
				write{diskSize - 64*1024, 64 * 1024, 0x33},
			)
			testutil.AddBitmap(t, d.image, "b1")
			sumFull := d.snapshot("full")
			full := d.backup(runner, "full", "", "")
			if full.Kind != "full" || full.Stats.ChunksTotal != 25 {
				t.Fatalf("full: kind %s, %d chunks", full.Kind, full.Stats.ChunksTotal)
			}
			// 0..2 and 10 are one content; 5,6,7 and the last chunk differ from it.
			if full.Stats.ChunksUploaded != 5 || full.Stats.ChunksDeduped != 3 {
				t.Errorf("full: %d uploaded, %d deduplicated; want 5 and 3", full.Stats.ChunksUploaded, full.Stats.ChunksDeduped)
			}
			if full.Stats.BytesRead != 7*chunkSize+diskSize%chunkSize {
				t.Errorf("full: read %d bytes, want only the allocated chunks", full.Stats.BytesRead)
			}

			writes1 := []write{
				{1 * mib, 1 * mib, -1},                  // zero write over data: a zero marker
				{4*mib - 8192, 16384, 0x44},             // across a chunk boundary
				{diskSize - 4096, 4096, 0x55},           // into the short last chunk
				{15*mib + 12345 - 12345%512, 512, 0x66}, // into a hole
			}
			d.write(writes1...)
			sumInc1 := d.snapshot("inc1")
			inc1 := d.backup(runner, "inc1", "b1", full.ID)
			testutil.AddBitmap(t, d.image, "b2")
			assertIncremental(t, inc1, writes1)

			writes2 := []write{
				{20 * mib, 2 * mib, 0x77},
				{4*mib - 8192, 16384, 0x44}, // rewritten with the same bytes
			}
			d.write(writes2...)
			sumInc2 := d.snapshot("inc2")
			inc2 := d.backup(runner, "inc2", "b2", inc1.ID)
			assertIncremental(t, inc2, writes2)

			for _, c := range []struct {
				backup *repository.Manifest
				want   string
			}{{full, sumFull}, {inc1, sumInc1}, {inc2, sumInc2}} {
				if got := restoreSum(t, runner, c.backup.ID); got != c.want {
					t.Errorf("restore of %s (%s): sha256 %s, want %s", c.backup.ID, c.backup.Kind, got, c.want)
				}
			}
			verify := jobs.Spec{SpecVersion: 1, ID: "verify-inc2", Kind: jobs.KindVerify, Backup: inc2.ID}
			if res, err := runner.Run(context.Background(), verify, nil); err != nil || !res.Verify.OK() {
				t.Errorf("verify inc2: %+v, %v", res.Verify, err)
			}
		})
	}
}

// assertIncremental checks that an incremental read and stored only the chunks the
// writes touched and took every other chunk from its parent.
func assertIncremental(t *testing.T, m *repository.Manifest, ws []write) {
	t.Helper()
	dirty := chunksOf(ws)
	st := m.Stats
	if m.Kind != "incremental" {
		t.Errorf("%s: kind %s", m.ID, m.Kind)
	}
	if st.ChunksReused != st.ChunksTotal-len(dirty) {
		t.Errorf("%s: %d chunks reused from the parent, want %d", m.ID, st.ChunksReused, st.ChunksTotal-len(dirty))
	}
	// A position of which at most half is dirty is patched: only its dirty blocks
	// (the bitmap's granularity) are read. Others are read whole.
	blocks := map[int]int64{} // chunk position -> dirty bytes in whole bitmap blocks
	seen := map[int64]bool{}
	for _, w := range ws {
		for b := w.off / bitmapGranularity; b <= (w.off+w.length-1)/bitmapGranularity; b++ {
			if !seen[b] {
				seen[b] = true
				c := int(b * bitmapGranularity / chunkSize)
				blocks[c] += min(bitmapGranularity, diskSize-b*bitmapGranularity)
			}
		}
	}
	var maxRead int64
	patched := 0
	for c, n := range blocks {
		if 2*n <= m.ChunkLen(c) {
			maxRead += n
			patched++
		} else {
			maxRead += m.ChunkLen(c)
		}
	}
	if st.BytesRead > maxRead {
		t.Errorf("%s: read %d bytes, more than the %d of the dirty blocks (of whole chunks where more than half is dirty)", m.ID, st.BytesRead, maxRead)
	}
	if st.ChunksPatched != patched {
		t.Errorf("%s: %d chunk positions patched, want %d", m.ID, st.ChunksPatched, patched)
	}
	// Every dirty position was stored whole (uploaded, found stored, or a zero
	// marker) or patched; the patched ones' blocks (a few KiB in these tests) went
	// into one new chunk together.
	patchChunks := min(patched, 1)
	if got := st.ChunksUploaded + st.ChunksDeduped - patchChunks + st.ChunksZero + st.ChunksPatched; got != len(dirty) {
		t.Errorf("%s: %d uploaded + %d deduplicated + %d zero + %d patched positions (%d chunk of patches), want the %d dirty ones",
			m.ID, st.ChunksUploaded, st.ChunksDeduped, st.ChunksZero, st.ChunksPatched, patchChunks, len(dirty))
	}
}

// bitmapGranularity is the granularity of qemu-img's bitmaps on our images: their
// cluster size.
const bitmapGranularity = 64 << 10

func TestBackupErrors(t *testing.T) {
	repo := "file://" + filepath.Join(t.TempDir(), "repo")
	runner := jobs.NewRunner(jobs.WithDefaultRepository(repo))
	d := newDisk(t)
	d.write(write{0, 2 * mib, 0x11})
	testutil.AddBitmap(t, d.image, "b1")
	full := d.backup(runner, "full", "", "")

	uri, stop := testutil.ServeQemuNBD(t, d.image, "b1")
	defer stop()
	other := backupSpec("other-disk", uri, "b1", full.ID)
	other.Disk = "vm2/vdb"
	cases := []struct {
		name string
		spec jobs.Spec
		code string
	}{
		{"missing socket", backupSpec("nosock", "nbd+unix:///?socket="+filepath.Join(t.TempDir(), "none.sock"), "", ""), jobs.CodeSourceUnreachable},
		{"unknown bitmap", backupSpec("nobitmap", uri, "nope", full.ID), jobs.CodeBitmapNotFound},
		{"missing parent", backupSpec("noparent", uri, "b1", "01JDXXXXXXXXXXXXXXXXXXXXXX"), jobs.CodeParentNotFound},
		{"parent of another disk", other, jobs.CodeParentMismatch},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := runner.Run(context.Background(), c.spec, nil)
			if err == nil {
				t.Fatal("no error")
			}
			if f := jobs.Classify(err); f.Code != c.code {
				t.Errorf("code %s (%v), want %s", f.Code, err, c.code)
			}
		})
	}
	store, err := sinks.OpenStore(context.Background(), repo)
	if err != nil {
		t.Fatal(err)
	}
	r, err := repository.Open(context.Background(), store, nil)
	if err != nil {
		t.Fatal(err)
	}
	list, _, err := r.ListBackups(context.Background(), "")
	if err != nil || len(list) != 1 || list[0].ID != full.ID {
		t.Errorf("after failed backups the repository lists %v (%v), want only %s", list, err, full.ID)
	}
	var _ = errors.Is
}
