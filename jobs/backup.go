package jobs

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/blockferry/blockferry/internal/safe"

	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/blockferry/blockferry/backends"
	"github.com/blockferry/blockferry/sinks/repository"
)

// BackupParams describe one backup run.
type BackupParams struct {
	ID    string // the new backup's id; NewBackupID() when empty
	JobID string
	// Resume keeps a checkpoint under JobID, so that a retry of the job continues
	// where this attempt stopped and a redelivered job never makes two backups.
	Resume bool
	// Source is the device URI, recorded in the checkpoint.
	Source string
	// Message is the job message's identity (Spec.Message), recorded in the
	// checkpoint: only the same message resumes it.
	Message string
	Disk    string
	Bitmap  string // dirty bitmap the source was opened with; empty for a full backup
	// Parent is the backup an incremental is taken against; nil for a full backup.
	Parent *repository.Manifest
	Labels map[string]string
	// Checkpoint is the checkpoint the backup starts, recorded in its manifest.
	Checkpoint string
	// FallbackReason is set when the job asked for an incremental whose chain is
	// broken and this full backup stands in for it (chain.go).
	FallbackReason string
	// ChunkSize of a full backup; 0 takes the repository's. An incremental always
	// uses its parent's.
	ChunkSize int64
	// Limits bound the chunks in flight (read, hash, compress, upload).
	Limits Limits
	// Compress chunks with zstd (incompressible ones are stored as they are).
	Compress bool
	// Log receives what the backup does on its own account: resuming an earlier
	// attempt, checkpoints that could not be written. nil logs nothing.
	Log *zap.Logger
}

// Errors of a backup that no retry can fix.
var (
	ErrParentMismatch = errors.New("parent backup does not match")
	ErrInvalid        = errors.New("invalid request")
)

// Backup reads src and stores it in repo as a new backup. Only after every chunk
// the manifest names is stored is the manifest written; a backup that fails or is
// cancelled leaves no manifest, and its stored chunks are reused by the next try.
//
// p comes from a valid spec (Runner): Bitmap and Parent are set together, for an
// incremental, or neither; a full backup that stands in for a broken incremental
// (FallbackReason) may keep the Bitmap, which it ignores. Backup checks what only it can see: that the parent
// is a backup of the same disk at the source's size, and that the chunk size it
// takes (the parent's, p's or the repository's) is one the format supports.
func Backup(ctx context.Context, repo *repository.Repository, src backends.Source, p BackupParams, progress *Progress) (*repository.Manifest, error) {
	if progress == nil {
		progress = NewProgress()
	}
	m, err := newManifest(repo, src, p)
	if err != nil {
		return nil, err
	}
	// From here on the attempt writes through a repository that keeps it safe
	// from concurrent garbage collection (repository.GCView).
	repo, gcv, err := repo.BeginAttempt(ctx, p.Parent)
	if err != nil {
		return nil, err
	}
	defer gcv.End(ctx)
	progress.bytesTotal.Store(m.Size)
	rs, finished, err := resume(ctx, repo, m, p)
	if err != nil {
		return nil, err
	}
	if finished != nil { // an earlier attempt of this job wrote it
		progress.bytesDone.Store(m.Size)
		return finished, nil
	}
	r := &backupRun{
		repo: repo, src: src, parent: p.Parent, limits: p.Limits, compress: p.Compress,
		m: m, resume: rs, progress: progress,
	}
	if err := r.run(ctx); err != nil {
		return nil, err
	}
	m.Patches = r.patches.m
	m.Completed = time.Now().UTC()
	m.Stats = progress.backupStats(m)
	if err := repo.PutManifest(ctx, m); err != nil {
		return nil, err
	}
	rs.finish(ctx)
	return m, nil
}

// newManifest starts the manifest of the backup p describes, of a source of
// src's size, and checks that its parent is one to take it against.
func newManifest(repo *repository.Repository, src backends.Source, p BackupParams) (*repository.Manifest, error) {
	m := &repository.Manifest{
		Version: repository.ManifestVersion, ID: p.ID, JobID: p.JobID, Disk: p.Disk, Kind: "full",
		Labels: p.Labels, Started: time.Now().UTC(), Size: src.Size(), ChunkSize: p.ChunkSize,
		Checkpoint: p.Checkpoint, FallbackReason: p.FallbackReason,
	}
	if m.ID == "" {
		m.ID = NewBackupID()
	}
	if m.ChunkSize == 0 {
		m.ChunkSize = repo.Config().ChunkSize
	}
	parent := p.Parent
	if parent != nil {
		switch {
		case parent.Disk != p.Disk:
			return nil, fmt.Errorf("%w: parent %s is a backup of disk %q, not %q", ErrParentMismatch, parent.ID, parent.Disk, p.Disk)
		case parent.Size != m.Size:
			return nil, fmt.Errorf("%w: parent %s has size %d, the disk now has %d: take a full backup", ErrParentMismatch, parent.ID, parent.Size, m.Size)
		}
		m.Kind, m.Parent, m.Bitmap, m.ChunkSize = "incremental", parent.ID, p.Bitmap, parent.ChunkSize
	}
	if !repository.ValidChunkSize(m.ChunkSize) {
		return nil, fmt.Errorf("%w: chunk size %d: want a power of two from %d to %d", ErrInvalid, m.ChunkSize, repository.MinChunkSize, repository.MaxChunkSize)
	}
	m.Chunks = make([]string, repository.ChunkCount(m.Size, m.ChunkSize))
	return m, nil
}

// backupRun is one backup in progress: what it reads, where it stores, the
// manifest it fills in and what it has done so far. Its workers share it; each
// chunk position is filled in by one of them.
type backupRun struct {
	repo     *repository.Repository
	src      backends.Source
	parent   *repository.Manifest // nil for a full backup
	limits   Limits
	compress bool

	m        *repository.Manifest
	patches  patchSet     // the manifest's patches, as the workers make them
	resume   *resumeState // the job's checkpoint: what an earlier attempt stored, what this one did
	progress *Progress    // counts what the run does, for its monitor and its statistics
}

// run plans the chunk positions and stores them with the run's workers, writing
// the checkpoint now and then. A run cancelled by its user drops the checkpoint.
func (r *backupRun) run(ctx context.Context) error {
	stopSaving := r.resume.saveEvery(ctx, checkpointInterval)
	g, gctx := errgroup.WithContext(ctx)
	tasks := make(chan chunkTask, 2*r.limits.concurrency())
	safe.Go(g, func() error {
		defer close(tasks)
		return planChunks(gctx, r.src, r.m, r.parent, tasks)
	})
	for range r.limits.concurrency() {
		safe.Go(g, func() error {
			for t := range tasks {
				if err := r.chunk(gctx, t); err != nil {
					return err
				}
			}
			return nil
		})
	}
	err := g.Wait()
	if err == nil {
		err = ctx.Err()
	}
	stopSaving()
	if err != nil && errors.Is(context.Cause(ctx), ErrCancelled) {
		r.resume.drop(ctx)
	}
	return err
}

// chunk stores the chunk position, or group of patched positions, of task t.
func (r *backupRun) chunk(ctx context.Context, t chunkTask) error {
	if err := ctx.Err(); err != nil { // a failed sibling: read no more
		return err
	}
	if t.action == actionPatch {
		return r.withChunkBuffer(ctx, func(buf []byte) error { return r.patch(ctx, t.group, buf) })
	}
	n := r.m.ChunkLen(t.index)
	defer r.progress.bytesDone.Add(n)
	if t.action == actionRead && r.fromCheckpoint(t.index) {
		return nil
	}
	switch t.action {
	case actionReuse:
		r.m.Chunks[t.index] = r.parent.Chunks[t.index]
		r.patches.set(t.index, r.parent.Patches[t.index])
		r.progress.addReused(n)
		return nil
	case actionZero:
		r.progress.addZero(n)
		return nil
	}
	return r.withChunkBuffer(ctx, func(buf []byte) error { return r.whole(ctx, t.index, buf[:n]) })
}

// fromCheckpoint takes chunk position i from what an earlier attempt of the job
// stored there, if it stored it.
func (r *backupRun) fromCheckpoint(i int) bool {
	e, ok := r.resume.stored(i)
	if !ok {
		return false
	}
	r.m.Chunks[i] = e.chunk
	r.patches.set(i, e.patches)
	r.progress.addResumed(r.m.ChunkLen(i))
	return true
}

// withChunkBuffer runs fn with a chunk buffer, once the budget has room for it
// and for the object it is sealed into.
func (r *backupRun) withChunkBuffer(ctx context.Context, fn func(buf []byte) error) error {
	release, err := r.limits.Memory.reserve(ctx, backupChunkMemory(r.m.ChunkSize))
	if err != nil {
		return err
	}
	defer release()
	buf := getChunkBuffer(r.m.ChunkSize)
	defer putChunkBuffer(buf)
	return fn(*buf)
}

// whole reads chunk position i into data and stores it.
func (r *backupRun) whole(ctx context.Context, i int, data []byte) error {
	n := int64(len(data))
	off := int64(i) * r.m.ChunkSize
	if _, err := r.src.ReadAt(ctx, data, off); err != nil {
		return fmt.Errorf("read chunk %d at offset %d: %w", i, off, err)
	}
	r.progress.bytesRead.Add(n)
	if isZero(data) { // allocated, or dirty, but zeroes: a marker is enough
		r.progress.addZero(n)
		r.resume.record(i, storedEntry{})
		return nil
	}
	id, err := r.store(ctx, data)
	if err != nil {
		return err
	}
	r.m.Chunks[i] = id
	r.resume.record(i, storedEntry{chunk: id})
	return nil
}

// store puts data into the repository and counts what that cost.
func (r *backupRun) store(ctx context.Context, data []byte) (string, error) {
	res, err := r.repo.PutChunk(ctx, data, r.compress)
	if err != nil {
		return "", err
	}
	r.progress.addStored(int64(len(data)), res)
	return res.ID.String(), nil
}

var zeroPage [64 << 10]byte

func isZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeroPage))
		if string(b[:n]) != string(zeroPage[:n]) { // compiles to memequal, no allocation
			return false
		}
		b = b[n:]
	}
	return true
}
