package jobs

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/blockferry/blockferry/sinks/repository"
)

// ErrCancelled is the cause a job's context is cancelled with when a user cancels
// it. A cancelled backup drops its checkpoint; one interrupted for any other
// reason (a worker shutting down) keeps it, so that the next attempt resumes.
var ErrCancelled = errors.New("job cancelled")

// checkpointInterval is how often a running backup records its progress.
const checkpointInterval = 5 * time.Second

// resumeState tracks the chunks a backup has stored, and what an earlier attempt of
// the same job stored, through the repository's checkpoint of the job.
type resumeState struct {
	repo *repository.Repository
	log  *zap.Logger
	mu   sync.Mutex
	cp   *repository.Checkpoint // nil: no job id, nothing is recorded
	prev *repository.Checkpoint // what an earlier attempt stored; nil: nothing
	// dirty is set when cp changed since it was last written.
	dirty bool
}

// resume loads the job's checkpoint. When it belongs to this same backup (same
// disk, size, chunk size, parent and bitmap), m takes the earlier attempt's backup
// id, so a retried job never makes two backups. It returns the finished manifest
// when the earlier attempt got as far as writing it.
func resume(ctx context.Context, repo *repository.Repository, m *repository.Manifest, p BackupParams) (*resumeState, *repository.Manifest, error) {
	log := p.Log
	if log == nil {
		log = zap.NewNop()
	}
	rs := &resumeState{repo: repo, log: log.With(zap.String("job", m.JobID))}
	if !p.Resume || m.JobID == "" {
		return rs, nil, nil
	}
	// A checkpoint only saves work: one that cannot be read (damaged, written with
	// another key) is ignored and the backup starts over, under a new id.
	cp, err := repo.LoadCheckpoint(ctx, m.JobID)
	if err != nil {
		rs.log.Warn("checkpoint ignored: the backup starts over", zap.Error(err))
	}
	switch {
	case cp == nil:
	case cp.Message == p.Message && cp.Source == p.Source && cp.Disk == m.Disk && cp.Size == m.Size && cp.ChunkSize == m.ChunkSize &&
		cp.Parent == m.Parent && cp.Bitmap == m.Bitmap:
		done, err := repo.Manifest(ctx, cp.BackupID)
		if err == nil {
			rs.log.Info("an earlier attempt of the job completed the backup", zap.String("backup", done.ID))
			return nil, done, nil
		}
		if !errors.Is(err, repository.ErrBackupNotFound) {
			return nil, nil, err
		}
		m.ID, m.Started = cp.BackupID, cp.Started
		rs.prev = cp
		rs.log.Info("resuming the backup of an earlier attempt", zap.String("backup", m.ID), zap.Int("positions_stored", len(cp.Done)),
			zap.Int("positions", len(m.Chunks)))
	default:
		rs.log.Info("checkpoint of another backup ignored: the backup starts over", zap.String("checkpoint_backup", cp.BackupID))
	}
	rs.cp = &repository.Checkpoint{
		JobID: m.JobID, BackupID: m.ID, Message: p.Message, Source: p.Source, Disk: m.Disk, Size: m.Size, ChunkSize: m.ChunkSize,
		Parent: m.Parent, Bitmap: m.Bitmap, Started: m.Started, Done: map[int]string{}, Patches: map[int][]repository.Patch{},
	}
	if rs.prev != nil {
		maps.Copy(rs.cp.Done, rs.prev.Done)
		maps.Copy(rs.cp.Patches, rs.prev.Patches)
	}
	// The backup id is recorded before any chunk, so that even a backup that reads
	// nothing (a clean incremental) is found again if its worker dies after
	// writing the manifest.
	rs.dirty = true
	if err := rs.save(ctx); err != nil {
		return nil, nil, err
	}
	return rs, nil, nil
}

// storedEntry is what a chunk position was stored as: a chunk id ("" for zeroes)
// and the patches laid over it, if any.
type storedEntry struct {
	chunk   string
	patches []repository.Patch
}

// stored returns what an earlier attempt stored at chunk position i.
func (rs *resumeState) stored(i int) (storedEntry, bool) {
	if rs.prev == nil {
		return storedEntry{}, false
	}
	id, ok := rs.prev.Done[i]
	return storedEntry{chunk: id, patches: rs.prev.Patches[i]}, ok
}

// record notes what chunk position i is stored as.
func (rs *resumeState) record(i int, e storedEntry) {
	if rs.cp == nil {
		return
	}
	rs.mu.Lock()
	rs.cp.Done[i] = e.chunk
	if len(e.patches) > 0 {
		rs.cp.Patches[i] = e.patches
	}
	rs.dirty = true
	rs.mu.Unlock()
}

// save writes the checkpoint if it changed.
func (rs *resumeState) save(ctx context.Context) error {
	if rs.cp == nil {
		return nil
	}
	rs.mu.Lock()
	if !rs.dirty {
		rs.mu.Unlock()
		return nil
	}
	rs.dirty = false
	cp := *rs.cp
	cp.Done = maps.Clone(rs.cp.Done)
	cp.Patches = maps.Clone(rs.cp.Patches) // the patch slices themselves are never modified
	rs.mu.Unlock()
	cp.Updated = time.Now().UTC()
	if err := rs.repo.PutCheckpoint(ctx, &cp); err != nil {
		rs.mu.Lock()
		rs.dirty = true // try again at the next save
		rs.mu.Unlock()
		return fmt.Errorf("checkpoint: %w", err)
	}
	return nil
}

// saveEvery writes the checkpoint now and then until ctx ends, and once more at
// the end, so that an attempt that fails keeps what it stored.
func (rs *resumeState) saveEvery(ctx context.Context, d time.Duration) func() {
	if rs.cp == nil {
		return func() {}
	}
	done := make(chan struct{})
	stop := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(d)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				rs.saveOrLog(ctx) // a missed checkpoint only costs re-reading
			}
		}
	}()
	return func() {
		close(stop)
		<-done
		// The context may be cancelled: the final save must still happen.
		rs.saveOrLog(context.WithoutCancel(ctx))
	}
}

// saveOrLog saves the checkpoint and logs a failure, for the saves a backup does
// not fail over: the next save tries again, and a lost one costs a retry only
// re-reading.
func (rs *resumeState) saveOrLog(ctx context.Context) {
	if err := rs.save(ctx); err != nil {
		rs.log.Warn("checkpoint not written", zap.String("backup", rs.cp.BackupID), zap.Error(err))
	}
}

// finish replaces the checkpoint by a small record of the backup the job made: a
// redelivery of the job after its manifest was written (the worker died before its
// ack) then returns that backup instead of making a second one.
func (rs *resumeState) finish(ctx context.Context) {
	if rs.cp == nil {
		return
	}
	rs.mu.Lock()
	rs.cp.Done, rs.cp.Patches, rs.dirty = map[int]string{}, nil, true
	rs.mu.Unlock()
	rs.saveOrLog(context.WithoutCancel(ctx))
}

// drop removes the checkpoint: the backup was cancelled for good.
func (rs *resumeState) drop(ctx context.Context) {
	if rs.cp == nil {
		return
	}
	if err := rs.repo.DeleteCheckpoint(context.WithoutCancel(ctx), rs.cp.JobID); err != nil {
		rs.log.Warn("checkpoint of a cancelled backup not deleted", zap.String("backup", rs.cp.BackupID), zap.Error(err))
	}
}
