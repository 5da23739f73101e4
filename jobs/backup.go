package jobs

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

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
	Disk   string
	Bitmap string // dirty bitmap the source was opened with; empty for a full backup
	// Parent is the backup an incremental is taken against; nil for a full backup.
	Parent *repository.Manifest
	Labels map[string]string
	// ChunkSize of a full backup; 0 takes the repository's. An incremental always
	// uses its parent's.
	ChunkSize int64
	// Limits bound the chunks in flight (read, hash, compress, upload).
	Limits Limits
	// Compress chunks with zstd (incompressible ones are stored as they are).
	Compress bool
}

// Errors of a backup that no retry can fix.
var (
	ErrParentMismatch = errors.New("parent backup does not match")
	ErrInvalid        = errors.New("invalid request")
)

// chunkAction is what the planner decided for one chunk position.
type chunkAction uint8

const (
	actionRead  chunkAction = iota // read, hash, store
	actionZero                     // reads as zeroes: store a marker, never read
	actionReuse                    // clean in the bitmap: the parent's entry holds
	actionPatch                    // a little changed: read and store only that, as patches
)

type chunkTask struct {
	index  int // the position, but for actionPatch
	action chunkAction
	// group lists, for actionPatch, the positions whose dirty blocks are stored
	// together in one new chunk.
	group []patchPosition
}

// Backup reads src and stores it in repo as a new backup. Only after every chunk
// the manifest names is stored is the manifest written; a backup that fails or is
// cancelled leaves no manifest, and its stored chunks are reused by the next try.
func Backup(ctx context.Context, repo *repository.Repository, src backends.Source, p BackupParams, progress *Progress) (*repository.Manifest, error) {
	if progress == nil {
		progress = NewProgress()
	}
	started := time.Now().UTC()
	m := &repository.Manifest{
		Version: repository.ManifestVersion, ID: p.ID, JobID: p.JobID, Disk: p.Disk, Kind: "full",
		Labels: p.Labels, Started: started, Size: src.Size(), ChunkSize: p.ChunkSize,
	}
	if m.ID == "" {
		m.ID = NewBackupID()
	}
	if m.ChunkSize == 0 {
		m.ChunkSize = repo.Config().ChunkSize
	}
	parent := p.Parent
	if (p.Bitmap == "") != (parent == nil) {
		return nil, fmt.Errorf("%w: an incremental backup needs both a bitmap and a parent", ErrInvalid)
	}
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
	// From here on the attempt writes through a repository that keeps it safe
	// from concurrent garbage collection (sinks/repository.GCView).
	repo, gcv, err := repo.BeginAttempt(ctx, parent)
	if err != nil {
		return nil, err
	}
	defer gcv.End(ctx)
	patches := &patchSet{}
	progress.bytesTotal.Store(m.Size)
	rs, finished, err := resume(ctx, repo, m, p)
	if err != nil {
		return nil, err
	}
	if finished != nil { // an earlier attempt of this job wrote it
		progress.bytesDone.Store(m.Size)
		return finished, nil
	}
	stopSaving := rs.saveEvery(ctx, checkpointInterval)

	var st backupCounters
	g, gctx := errgroup.WithContext(ctx)
	tasks := make(chan chunkTask, 2*p.Limits.concurrency())
	g.Go(func() error {
		defer close(tasks)
		return planChunks(gctx, src, m, parent, tasks)
	})
	for range p.Limits.concurrency() {
		g.Go(func() error {
			for t := range tasks {
				if err := backupChunk(gctx, repo, src, m, patches, p, rs, t, &st, progress); err != nil {
					return err
				}
			}
			return nil
		})
	}
	err = g.Wait()
	if err == nil {
		err = ctx.Err()
	}
	stopSaving()
	if err != nil {
		if errors.Is(context.Cause(ctx), ErrCancelled) {
			rs.drop(ctx)
		}
		return nil, err
	}
	m.Patches = patches.m
	m.Completed = time.Now().UTC()
	m.Stats = st.stats(m)
	if err := repo.PutManifest(ctx, m); err != nil {
		return nil, err
	}
	rs.finish(ctx)
	return m, nil
}

// planChunks walks the source's extents window by window and sends one task per
// chunk position, in order. It never asks for the whole disk's map at once.
// parent is nil for a full backup.
func planChunks(ctx context.Context, src backends.Source, m *repository.Manifest, parent *repository.Manifest, tasks chan<- chunkTask) error {
	const windowChunks = 256 // 1 GiB of 4 MiB chunks per block status window
	window := m.ChunkSize * windowChunks
	var pending []backends.Extent // extents not yet consumed, starting at pos
	var dirtyExtents []backends.Extent
	send := func(t chunkTask) error {
		select {
		case tasks <- t:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	group := patchGroup{limit: patchChunkSize(m.ChunkSize)}
	pos := int64(0)
	for i := range m.Chunks {
		start := int64(i) * m.ChunkSize
		end := min(start+m.ChunkSize, m.Size)
		dirty, data := false, false
		dirtyExtents = dirtyExtents[:0]
		for start < end {
			if len(pending) == 0 {
				ext, err := src.Extents(ctx, pos, window)
				if err != nil {
					return fmt.Errorf("extents at %d: %w", pos, err)
				}
				if len(ext) == 0 || ext[0].Start != pos {
					return fmt.Errorf("extents at %d: source returned no extent for the position", pos)
				}
				pending = ext
			}
			e := &pending[0]
			n := min(e.End(), end) - start
			dirty = dirty || e.Dirty
			data = data || !e.Zero
			if e.Dirty {
				dirtyExtents = append(dirtyExtents, backends.Extent{Start: start, Length: n, Dirty: true, Zero: e.Zero})
			}
			start += n
			pos = start
			e.Start, e.Length = e.Start+n, e.Length-n
			if e.Length == 0 {
				pending = pending[1:]
			}
		}
		t := chunkTask{index: i, action: actionRead}
		switch {
		case parent != nil && !dirty:
			t.action = actionReuse
		case !data:
			t.action = actionZero
		case parent != nil && patchable(parent.Patches[i], dirtyExtents, int64(i)*m.ChunkSize, m.ChunkLen(i)):
			// Into the group of positions whose changed blocks make one chunk; a
			// group that is full goes out first.
			if full, ok := group.add(i, dirtyExtents); ok {
				if err := send(full); err != nil {
					return err
				}
			}
			continue
		}
		if err := send(t); err != nil {
			return err
		}
	}
	if last, ok := group.flush(); ok {
		return send(last)
	}
	return nil
}

type backupCounters struct {
	read, written, deduped, reused, zero, resumed           atomic.Int64
	nUploaded, nDeduped, nReused, nZero, nResumed, nPatched atomic.Int64
}

func (c *backupCounters) stats(m *repository.Manifest) repository.BackupStats {
	d := m.Completed.Sub(m.Started).Seconds()
	s := repository.BackupStats{
		BytesTotal: m.Size, BytesRead: c.read.Load(), BytesWritten: c.written.Load(),
		BytesDeduplicated: c.deduped.Load(), BytesReused: c.reused.Load(), BytesZero: c.zero.Load(),
		ChunksTotal: len(m.Chunks), ChunksUploaded: int(c.nUploaded.Load()), ChunksDeduped: int(c.nDeduped.Load()),
		ChunksReused: int(c.nReused.Load()), ChunksZero: int(c.nZero.Load()), DurationSeconds: d,
		BytesResumed: c.resumed.Load(), ChunksResumed: int(c.nResumed.Load()), ChunksPatched: int(c.nPatched.Load()),
	}
	if d > 0 {
		s.ReadBytesPerSec = float64(s.BytesRead) / d
		s.StoredBytesPerSec = float64(s.BytesTotal) / d
	}
	return s
}

func backupChunk(ctx context.Context, repo *repository.Repository, src backends.Source, m *repository.Manifest, patches *patchSet,
	p BackupParams, rs *resumeState, t chunkTask, st *backupCounters, progress *Progress) error {
	if err := ctx.Err(); err != nil { // a failed sibling: read no more
		return err
	}
	if t.action == actionPatch {
		return withChunkBuffer(ctx, p.Limits.Memory, m.ChunkSize, func(buf []byte) error {
			return backupPatches(ctx, repo, src, m, patches, p, rs, t.group, buf, st, progress)
		})
	}
	n := m.ChunkLen(t.index)
	defer progress.bytesDone.Add(n)
	if e, ok := rs.stored(t.index); ok && t.action == actionRead {
		m.Chunks[t.index] = e.chunk
		patches.set(t.index, e.patches)
		st.resumed.Add(n)
		st.nResumed.Add(1)
		return nil
	}
	switch t.action {
	case actionReuse:
		m.Chunks[t.index] = p.Parent.Chunks[t.index]
		patches.set(t.index, p.Parent.Patches[t.index])
		st.reused.Add(n)
		st.nReused.Add(1)
		return nil
	case actionZero:
		st.zero.Add(n)
		st.nZero.Add(1)
		return nil
	}
	return withChunkBuffer(ctx, p.Limits.Memory, m.ChunkSize, func(buf []byte) error {
		return backupWhole(ctx, repo, src, m, p, rs, t.index, buf[:n], st, progress)
	})
}

// withChunkBuffer runs fn with a chunk buffer, once the budget has room for it
// and for the object it is sealed into.
func withChunkBuffer(ctx context.Context, budget *MemoryBudget, chunkSize int64, fn func(buf []byte) error) error {
	release, err := budget.reserve(ctx, backupChunkMemory(chunkSize))
	if err != nil {
		return err
	}
	defer release()
	buf := getChunkBuffer(chunkSize)
	defer putChunkBuffer(buf)
	return fn(*buf)
}

// backupWhole reads chunk position i into data and stores it.
func backupWhole(ctx context.Context, repo *repository.Repository, src backends.Source, m *repository.Manifest,
	p BackupParams, rs *resumeState, i int, data []byte, st *backupCounters, progress *Progress) error {
	n := int64(len(data))
	off := int64(i) * m.ChunkSize
	if _, err := src.ReadAt(data, off); err != nil {
		return fmt.Errorf("read chunk %d at offset %d: %w", i, off, err)
	}
	st.read.Add(n)
	progress.bytesRead.Add(n)
	if isZero(data) { // allocated, or dirty, but zeroes: a marker is enough
		st.zero.Add(n)
		st.nZero.Add(1)
		rs.record(i, storedEntry{})
		return nil
	}
	id, err := storeChunk(ctx, repo, data, p.Compress, st, progress)
	if err != nil {
		return err
	}
	m.Chunks[i] = id
	rs.record(i, storedEntry{chunk: id})
	return nil
}

// storeChunk puts data into the repository and counts what that cost.
func storeChunk(ctx context.Context, repo *repository.Repository, data []byte, compress bool, st *backupCounters, progress *Progress) (string, error) {
	res, err := repo.PutChunk(ctx, data, compress)
	if err != nil {
		return "", err
	}
	n := int64(len(data))
	if res.Stored == 0 {
		st.deduped.Add(n)
		st.nDeduped.Add(1)
		progress.bytesDeduplicated.Add(n)
	} else {
		st.written.Add(int64(res.Stored))
		st.nUploaded.Add(1)
		progress.bytesWritten.Add(int64(res.Stored))
	}
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
