package jobs_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/blockferry/blockferry/backends"
	"github.com/blockferry/blockferry/backends/file"
	"github.com/blockferry/blockferry/jobs"
	"github.com/blockferry/blockferry/sinks"
	"github.com/blockferry/blockferry/sinks/repository"
)

// failingSource fails every read after the first `after` reads, like a connection
// that drops in the middle of a backup.
type failingSource struct {
	backends.Source
	reads, after atomic.Int64
}

var errDropped = errors.New("connection dropped")

func (s *failingSource) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	if s.reads.Add(1) > s.after.Load() {
		return 0, errDropped
	}
	return s.Source.ReadAt(ctx, p, off)
}

func openRepo(t *testing.T, uri string) *repository.Repository {
	t.Helper()
	store, err := sinks.OpenStore(context.Background(), uri)
	if err != nil {
		t.Fatal(err)
	}
	r, err := repository.OpenOrInit(context.Background(), store, repository.InitOptions{ChunkSize: jobs.DefaultChunkSize, Compression: jobs.DefaultCompression})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestResumeAfterInterruption: a second attempt of a job takes the chunks the
// first stored from its checkpoint, reads only the rest, keeps the backup id, and
// the result restores bit for bit.
func TestResumeAfterInterruption(t *testing.T) {
	uri := "file://" + filepath.Join(t.TempDir(), "repo")
	repo := openRepo(t, uri)
	path, want := rawDisk(t, 16*mib)
	img, err := file.OpenSource(path)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	src := &failingSource{Source: img}
	src.after.Store(3)
	params := jobs.BackupParams{JobID: "job-1", Resume: true, Source: "file://" + path, Disk: "vm1/vda", ChunkSize: chunkSize, Limits: jobs.Limits{Concurrency: 1}, Compress: true}
	if _, err := jobs.Backup(context.Background(), repo, src, params, nil); !errors.Is(err, errDropped) {
		t.Fatalf("first attempt: %v, want the dropped connection", err)
	}
	cp, err := repo.LoadCheckpoint(context.Background(), "job-1")
	if err != nil || cp == nil || len(cp.Done) != 3 {
		t.Fatalf("checkpoint after the first attempt: %+v, %v; want 3 chunks done", cp, err)
	}

	src.after.Store(1 << 30)
	src.reads.Store(0)
	m, err := jobs.Backup(context.Background(), repo, src, params, nil)
	if err != nil {
		t.Fatalf("second attempt: %v", err)
	}
	if m.ID != cp.BackupID || m.Stats.ChunksResumed != 3 || m.Stats.BytesRead > 16*mib-3*chunkSize {
		t.Errorf("second attempt: id %s (checkpoint %s), stats %+v", m.ID, cp.BackupID, m.Stats)
	}
	if cp, _ := repo.LoadCheckpoint(context.Background(), "job-1"); cp == nil || len(cp.Done) != 0 || cp.BackupID != m.ID {
		t.Errorf("after the backup was written the checkpoint is %+v, want only the backup id", cp)
	}
	// A third delivery of the same job (say the ack was lost) makes no new backup.
	again, err := jobs.Backup(context.Background(), repo, src, params, nil)
	if err != nil {
		t.Fatal(err)
	}
	list, _, _ := repo.ListBackups(context.Background(), "")
	if len(list) != 1 || again.ID != m.ID {
		t.Errorf("repository holds %d backups after a repeated job", len(list))
	}

	r := jobs.NewRunner(jobs.WithDefaultRepository(uri))
	out, err := restoreToFile(t, r, m.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got := fileSum(t, out); got != want {
		t.Fatalf("restored sha256 %s, want %s", got, want)
	}
}

// TestCancelledBackupLeavesNothing: a backup cancelled by the user writes no
// manifest and drops its checkpoint.
func TestCancelledBackupLeavesNothing(t *testing.T) {
	repo := openRepo(t, "file://"+filepath.Join(t.TempDir(), "repo"))
	path, _ := rawDisk(t, 16*mib)
	img, err := file.OpenSource(path)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	ctx, cancel := context.WithCancelCause(context.Background())
	src := &cancellingSource{Source: img, cancel: func() { cancel(jobs.ErrCancelled) }}
	_, err = jobs.Backup(ctx, repo, src, jobs.BackupParams{JobID: "job-c", Resume: true, Disk: "d", ChunkSize: chunkSize, Limits: jobs.Limits{Concurrency: 1}}, nil)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want cancelled", err)
	}
	if cp, _ := repo.LoadCheckpoint(context.Background(), "job-c"); cp != nil {
		t.Error("a cancelled backup kept its checkpoint")
	}
	if list, _, _ := repo.ListBackups(context.Background(), ""); len(list) != 0 {
		t.Errorf("a cancelled backup left %d manifests", len(list))
	}
}

// cancellingSource cancels the job on its second read.
type cancellingSource struct {
	backends.Source
	reads  atomic.Int64
	cancel func()
}

func (s *cancellingSource) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	if s.reads.Add(1) == 2 {
		s.cancel()
	}
	return s.Source.ReadAt(ctx, p, off)
}

// dirtySource marks the given ranges of a file source dirty, as a dirty bitmap
// would; everything else is clean.
type dirtySource struct {
	backends.Source
	dirty []backends.Extent
}

func (s *dirtySource) Extents(ctx context.Context, start, length int64) ([]backends.Extent, error) {
	ext, err := s.Source.Extents(ctx, start, length)
	if err != nil {
		return nil, err
	}
	var out []backends.Extent
	for _, e := range ext {
		for pos := e.Start; pos < e.End(); {
			// The next boundary of a dirty range after pos, and whether pos is dirty.
			next, dirty := e.End(), false
			for _, d := range s.dirty {
				switch {
				case d.Start <= pos && pos < d.End():
					next, dirty = min(next, d.End()), true
				case d.Start > pos:
					next = min(next, d.Start)
				}
			}
			out = append(out, backends.Extent{Start: pos, Length: next - pos, Dirty: dirty, Zero: e.Zero})
			pos = next
		}
	}
	return out, nil
}

// TestResumePatchedIncremental: an incremental that patches blocks of many chunk
// positions is interrupted; its retry takes the patches stored from the checkpoint
// and the result restores bit for bit.
func TestResumePatchedIncremental(t *testing.T) {
	uri := "file://" + filepath.Join(t.TempDir(), "repo")
	repo := openRepo(t, uri)
	path, _ := rawDisk(t, 16*mib)
	img, err := file.OpenSource(path)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	full, err := jobs.Backup(context.Background(), repo, img, jobs.BackupParams{Disk: "vm1/vda", ChunkSize: chunkSize, Limits: jobs.Limits{Concurrency: 2}, Compress: true}, nil)
	if err != nil {
		t.Fatal(err)
	}

	// 400 KiB rewritten in each of 8 chunk positions, holes and data alike: the
	// blocks of two positions fill a chunk of patches, so there are four.
	const dirtyLen = 400 << 10
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	var dirty []backends.Extent
	for i := range int64(8) {
		off := i*2*mib + 64<<10
		if _, err := f.WriteAt(bytes.Repeat([]byte{byte(i + 1)}, dirtyLen), off); err != nil {
			t.Fatal(err)
		}
		dirty = append(dirty, backends.Extent{Start: off, Length: dirtyLen, Dirty: true})
	}
	f.Close()
	want := fileSum(t, path)

	src := &failingSource{Source: &dirtySource{Source: img, dirty: dirty}}
	src.after.Store(3)
	params := jobs.BackupParams{JobID: "job-p", Resume: true, Source: "file://" + path, Disk: "vm1/vda", Bitmap: "b1", Parent: full, Limits: jobs.Limits{Concurrency: 1}, Compress: true}
	if _, err := jobs.Backup(context.Background(), repo, src, params, nil); !errors.Is(err, errDropped) {
		t.Fatalf("first attempt: %v, want the dropped connection", err)
	}
	cp, err := repo.LoadCheckpoint(context.Background(), "job-p")
	// Reads 1 and 2 made the first chunk of patches; read 4 failed the second.
	if err != nil || cp == nil || len(cp.Done) != 2 || len(cp.Patches) != 2 {
		t.Fatalf("checkpoint after the first attempt: %+v, %v; want 2 patched positions", cp, err)
	}
	src.after.Store(1 << 30)
	m, err := jobs.Backup(context.Background(), repo, src, params, nil)
	if err != nil {
		t.Fatalf("second attempt: %v", err)
	}
	if st := m.Stats; st.ChunksResumed != 2 || st.ChunksPatched != 6 || st.BytesRead != 6*dirtyLen || st.ChunksUploaded != 3 || len(m.Patches) != 8 {
		t.Errorf("second attempt: %d patched positions, stats %+v", len(m.Patches), st)
	}
	out, err := restoreToFile(t, jobs.NewRunner(jobs.WithDefaultRepository(uri)), m.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got := fileSum(t, out); got != want {
		t.Fatalf("restored sha256 %s, want %s", got, want)
	}
}
