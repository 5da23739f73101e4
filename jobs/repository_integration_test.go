package jobs_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/blockferry/blockferry/jobs"
	"github.com/blockferry/blockferry/sinks/repository"
)

const marker = "BLOCKFERRY-KNOWN-PLAINTEXT-0123456789 "

// rawDisk makes a sparse raw image with a text region, a random region and holes,
// and returns its path and sha256.
func rawDisk(t *testing.T, size int64) (string, string) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.raw")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	text := bytes.Repeat([]byte(marker), int(2*mib)/len(marker))
	if _, err := f.WriteAt(text, 1*mib+100); err != nil {
		t.Fatal(err)
	}
	noise := make([]byte, 3*mib)
	rng := rand.NewChaCha8([32]byte{1})
	rng.Read(noise)
	if _, err := f.WriteAt(noise, size-3*mib-7); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	return p, hex.EncodeToString(sum[:])
}

func runSpec(t *testing.T, r *jobs.Runner, s jobs.Spec) (jobs.Result, error) {
	t.Helper()
	s.SpecVersion = jobs.SpecVersion
	return r.Run(context.Background(), s, nil)
}

func fullBackupOfFile(t *testing.T, r *jobs.Runner, path string) *repository.Manifest {
	t.Helper()
	res, err := runSpec(t, r, jobs.Spec{ID: "b", Kind: jobs.KindBackup, Disk: "vm1/vda", Source: &jobs.Endpoint{URI: "file://" + path},
		Options: jobs.Options{ChunkSize: jobs.ByteSize(chunkSize)}})
	if err != nil {
		t.Fatalf("backup: %v", err)
	}
	return res.Backup
}

func restoreToFile(t *testing.T, r *jobs.Runner, backup string) (string, error) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "out.raw")
	_, err := runSpec(t, r, jobs.Spec{ID: "r", Kind: jobs.KindRestore, Backup: backup, Target: &jobs.Endpoint{URI: "file://" + out}})
	return out, err
}

func fileSum(t *testing.T, p string) string {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

func TestEncryptedRepository(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "repo")
	key := []byte("correct horse battery staple")
	r := jobs.NewRunner(jobs.WithDefaultRepository("file://"+dir), jobs.WithKey(key))
	disk, want := rawDisk(t, 16*mib+4096)
	m := fullBackupOfFile(t, r, disk)
	out, err := restoreToFile(t, r, m.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got := fileSum(t, out); got != want {
		t.Fatalf("restored sha256 %s, want %s", got, want)
	}

	// Nothing stored reveals the content or the disk's name, and chunk ids are not
	// the plain hashes of the content.
	var objects int
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		objects++
		data, _ := os.ReadFile(p)
		for _, s := range []string{marker[:16], "vm1/vda"} {
			if bytes.Contains(data, []byte(s)) {
				t.Errorf("%s holds plaintext %q", p, s)
			}
		}
		return nil
	})
	if objects < 3 {
		t.Fatalf("only %d objects stored", objects)
	}

	for name, k := range map[string][]byte{"wrong key": []byte("not the right key!"), "no key": nil} {
		t.Run(name, func(t *testing.T) {
			bad := jobs.NewRunner(jobs.WithDefaultRepository("file://"+dir), jobs.WithKey(k))
			_, err := restoreToFile(t, bad, m.ID)
			if f := jobs.Classify(err); f.Code != jobs.CodeKey || f.Retryable {
				t.Fatalf("restore with %s: %+v", name, f)
			}
		})
	}
}

// corruptOneChunk flips a byte in the middle of one stored chunk and returns its id.
func corruptOneChunk(t *testing.T, dir string) string {
	t.Helper()
	var victim string
	filepath.WalkDir(filepath.Join(dir, "chunks"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && victim == "" {
			victim = p
		}
		return err
	})
	if victim == "" {
		t.Fatal("no chunk stored")
	}
	data, err := os.ReadFile(victim)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0x40
	if err := os.WriteFile(victim, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return filepath.Base(victim)
}

func TestCorruptChunk(t *testing.T) {
	for _, encrypted := range []bool{false, true} {
		name := map[bool]string{false: "plain", true: "encrypted"}[encrypted]
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "repo")
			opts := []jobs.RunnerOption{jobs.WithDefaultRepository("file://" + dir)}
			if encrypted {
				opts = append(opts, jobs.WithKey([]byte("a key of some length")))
			}
			r := jobs.NewRunner(opts...)
			disk, _ := rawDisk(t, 8*mib)
			m := fullBackupOfFile(t, r, disk)
			bad := corruptOneChunk(t, dir)

			res, err := runSpec(t, r, jobs.Spec{ID: "v", Kind: jobs.KindVerify, Backup: m.ID})
			if !errors.Is(err, jobs.ErrVerifyFailed) {
				t.Fatalf("verify: %v", err)
			}
			if len(res.Verify.Corrupt) != 1 || res.Verify.Corrupt[0] != bad || len(res.Verify.Missing) != 0 {
				t.Errorf("verify report %+v, want corrupt [%s]", res.Verify, bad)
			}
			if !strings.Contains(err.Error(), bad) {
				t.Errorf("verify error %q does not name chunk %s", err, bad)
			}
			_, err = restoreToFile(t, r, m.ID)
			if f := jobs.Classify(err); f.Code != jobs.CodeCorrupt || !strings.Contains(err.Error(), bad) {
				t.Errorf("restore of a corrupt backup: %+v", f)
			}
		})
	}
}

func TestMissingChunk(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "repo")
	r := jobs.NewRunner(jobs.WithDefaultRepository("file://" + dir))
	disk, _ := rawDisk(t, 8*mib)
	m := fullBackupOfFile(t, r, disk)
	gone := m.Chunks[len(m.Chunks)-1]
	if err := os.Remove(filepath.Join(dir, "chunks", gone[:2], gone)); err != nil {
		t.Fatal(err)
	}
	res, err := runSpec(t, r, jobs.Spec{ID: "v", Kind: jobs.KindVerify, Backup: m.ID})
	if !errors.Is(err, jobs.ErrVerifyFailed) || len(res.Verify.Missing) != 1 || res.Verify.Missing[0] != gone {
		t.Errorf("verify: %+v, %v; want missing [%s]", res.Verify, err, gone)
	}
	// Restore says the same, at once: no retry brings the chunk back.
	_, err = restoreToFile(t, r, m.ID)
	if f := jobs.Classify(err); f.Code != jobs.CodeChunkMissing || f.Retryable || !strings.Contains(err.Error(), gone) {
		t.Errorf("restore of a backup with a missing chunk: %v: %+v", err, f)
	}
}

// TestDeduplicationAcrossDisks: a second disk with the same content stores nothing.
func TestDeduplicationAcrossDisks(t *testing.T) {
	r := jobs.NewRunner(jobs.WithDefaultRepository("file://" + filepath.Join(t.TempDir(), "repo")))
	disk, _ := rawDisk(t, 8*mib)
	first := fullBackupOfFile(t, r, disk)
	res, err := runSpec(t, r, jobs.Spec{ID: "b2", Kind: jobs.KindBackup, Disk: "vm2/vdb", Source: &jobs.Endpoint{URI: "file://" + disk},
		Options: jobs.Options{ChunkSize: jobs.ByteSize(chunkSize)}})
	if err != nil {
		t.Fatal(err)
	}
	second := res.Backup.Stats
	if first.Stats.ChunksUploaded == 0 || second.ChunksUploaded != 0 || second.BytesWritten != 0 ||
		second.ChunksDeduped != first.Stats.ChunksUploaded+first.Stats.ChunksDeduped {
		t.Errorf("first %+v, second %+v: the second disk should upload nothing", first.Stats, second)
	}
}

// TestRestoreIsSparse: zero chunks and zero runs inside data chunks stay holes, so a
// restored raw image takes about the space of its data.
// sparseDisk makes a 64 MiB raw image with 64 KiB of data, different in each, at
// 128 KiB into every fourth 1 MiB chunk, and holes elsewhere.
func sparseDisk(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "sparse.raw")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(64 * mib)
	for i := int64(0); i < 64; i += 4 { // 64 KiB of data in every fourth 1 MiB chunk
		f.WriteAt(bytes.Repeat([]byte{byte(i + 1)}, 64<<10), i*mib+128<<10)
	}
	f.Close()
	return p
}

func TestRestoreIsSparse(t *testing.T) {
	r := jobs.NewRunner(jobs.WithDefaultRepository("file://" + filepath.Join(t.TempDir(), "repo")))
	p := sparseDisk(t)
	m := fullBackupOfFile(t, r, p)
	out, err := restoreToFile(t, r, m.ID)
	if err != nil {
		t.Fatal(err)
	}
	if fileSum(t, out) != fileSum(t, p) {
		t.Fatal("restored image differs")
	}
	var st syscall.Stat_t
	if err := syscall.Stat(out, &st); err != nil {
		t.Fatal(err)
	}
	if allocated := st.Blocks * 512; allocated > 2*mib {
		t.Errorf("restored image allocates %d bytes for 1 MiB of data", allocated)
	}
}

// TestRestoreAndVerifyFigures: the figures a restore and a verify report are what
// they did, and what their progress showed.
func TestRestoreAndVerifyFigures(t *testing.T) {
	r := jobs.NewRunner(jobs.WithDefaultRepository("file://" + filepath.Join(t.TempDir(), "repo")))
	m := fullBackupOfFile(t, r, sparseDisk(t))
	if m.Stats.ChunksUploaded != 16 || m.Stats.ChunksZero != 48 || m.Stats.BytesRead != 16*mib {
		t.Fatalf("backup stats %+v: want 16 chunks uploaded, 48 zero, 16 MiB read", m.Stats)
	}

	progress := jobs.NewProgress()
	out := filepath.Join(t.TempDir(), "out.raw")
	res, err := r.Run(context.Background(), jobs.Spec{SpecVersion: jobs.SpecVersion, ID: "r", Kind: jobs.KindRestore, Backup: m.ID,
		Target: &jobs.Endpoint{URI: "file://" + out}}, progress)
	if err != nil {
		t.Fatal(err)
	}
	// The 16 stored chunks are fetched; of them only the 64 KiB blocks of data
	// are written, and the rest of the disk is zeroed.
	st, snap := res.Restore, progress.Snapshot()
	if st.BytesTotal != 64*mib || st.BytesFetched != 16*mib || st.BytesWritten != 16*64<<10 || st.BytesZero != 64*mib-16*64<<10 {
		t.Errorf("restore stats %+v", st)
	}
	if snap.BytesTotal != 64*mib || snap.BytesDone != 64*mib || snap.BytesRead != st.BytesFetched || snap.BytesWritten != st.BytesWritten {
		t.Errorf("restore progress %+v, stats %+v", snap, st)
	}

	progress = jobs.NewProgress()
	res, err = r.Run(context.Background(), jobs.Spec{SpecVersion: jobs.SpecVersion, ID: "v", Kind: jobs.KindVerify, Backup: m.ID}, progress)
	if err != nil {
		t.Fatal(err)
	}
	rep, snap := res.Verify, progress.Snapshot()
	if rep.ChunksChecked != 16 || rep.BytesChecked != 16*mib {
		t.Errorf("verify report %+v: want 16 chunks, 16 MiB checked", rep)
	}
	if snap.BytesTotal != 16*mib || snap.BytesDone != 16*mib || snap.BytesRead != rep.BytesChecked {
		t.Errorf("verify progress %+v, report %+v", snap, rep)
	}
}

// TestVerifyAgainstSource: verify with a source compares every chunk position with
// the disk, and names the chunks that changed since.
func TestVerifyAgainstSource(t *testing.T) {
	r := jobs.NewRunner(jobs.WithDefaultRepository("file://" + filepath.Join(t.TempDir(), "repo")))
	disk, _ := rawDisk(t, 8*mib)
	m := fullBackupOfFile(t, r, disk)
	verify := jobs.Spec{ID: "v", Kind: jobs.KindVerify, Backup: m.ID, Source: &jobs.Endpoint{URI: "file://" + disk}}
	res, err := runSpec(t, r, verify)
	if err != nil || !res.Verify.Compared || len(res.Verify.Differ) != 0 {
		t.Fatalf("verify against the unchanged disk: %+v, %v", res.Verify, err)
	}
	f, err := os.OpenFile(disk, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("changed"), 5*mib+10) // chunk 5 was a hole
	f.Close()
	res, err = runSpec(t, r, verify)
	if !errors.Is(err, jobs.ErrVerifyFailed) || len(res.Verify.Differ) != 1 || res.Verify.Differ[0] != 5*mib {
		t.Fatalf("verify against the changed disk: %+v, %v; want chunk at %d", res.Verify, err, 5*mib)
	}
}

// TestKeyOnUnencryptedRepository: a worker configured with a key refuses to write
// unencrypted backups into a repository created without one.
func TestKeyOnUnencryptedRepository(t *testing.T) {
	uri := "file://" + filepath.Join(t.TempDir(), "repo")
	disk, _ := rawDisk(t, 4*mib)
	fullBackupOfFile(t, jobs.NewRunner(jobs.WithDefaultRepository(uri)), disk)
	keyed := jobs.NewRunner(jobs.WithDefaultRepository(uri), jobs.WithKey([]byte("a key for this repo")))
	_, err := runSpec(t, keyed, jobs.Spec{ID: "b", Kind: jobs.KindBackup, Disk: "vm1/vda", Source: &jobs.Endpoint{URI: "file://" + disk}})
	if f := jobs.Classify(err); f.Code != jobs.CodeKey {
		t.Fatalf("backup with a key into an unencrypted repository: %v (%s)", err, f.Code)
	}
}

// TestJobsShareMemoryBudget: backups and restores running at once through one
// runner never reserve more than its memory budget together, however many chunks
// each may have in flight, and still finish bit for bit.
func TestJobsShareMemoryBudget(t *testing.T) {
	uri := "file://" + filepath.Join(t.TempDir(), "repo")
	// Room for 3 or 4 chunks of 1 MiB in flight, of the 24 the backups would like.
	budget := jobs.NewMemoryBudget(8 * mib)
	r := jobs.NewRunner(jobs.WithDefaultRepository(uri), jobs.WithConcurrency(8), jobs.WithMemoryBudget(budget))
	type disk struct{ path, sum string }
	var disks []disk
	for range 3 {
		p, sum := rawDisk(t, 16*mib)
		disks = append(disks, disk{p, sum})
	}
	ids := make([]string, len(disks))
	errs := make(chan error, len(disks))
	for i, d := range disks {
		go func() {
			res, err := runSpec(t, r, jobs.Spec{ID: fmt.Sprintf("b%d", i), Kind: jobs.KindBackup, Disk: fmt.Sprintf("vm%d/vda", i),
				Source: &jobs.Endpoint{URI: "file://" + d.path}, Options: jobs.Options{ChunkSize: jobs.ByteSize(chunkSize)}})
			if err == nil {
				ids[i] = res.Backup.ID
			}
			errs <- err
		}()
	}
	for range disks {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for i, d := range disks {
		go func() {
			out, err := restoreToFile(t, r, ids[i])
			if err == nil && fileSum(t, out) != d.sum {
				err = fmt.Errorf("restore of %s differs from the disk", ids[i])
			}
			errs <- err
		}()
	}
	for range disks {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	// The jobs wanted more than the budget and got it all, but not more.
	if budget.Peak() > budget.Size() || budget.Peak() < budget.Size()/2 {
		t.Errorf("peak reservation %d, budget %d", budget.Peak(), budget.Size())
	}
}
