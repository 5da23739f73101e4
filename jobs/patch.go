package jobs

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/blockferry/blockferry/internal/safe"

	"golang.org/x/sync/errgroup"

	"github.com/blockferry/blockferry/backends"
	"github.com/blockferry/blockferry/sinks/repository"
)

// An incremental backup stores a dirty position of which little changed as
// patches over its parent's entry (see repository.Manifest.Patches): it reads only the
// dirty blocks. The dirty blocks of neighbouring patched positions go into one
// chunk, so that 600 scattered 64 KiB writes cost a few dozen objects (and
// fsyncs, or PUTs) rather than one per position.

// Limits of patching. A dirty position beyond any of them is read whole instead,
// which also folds the patches earlier incrementals left there back into one
// chunk: a restore then never assembles a position from more than a few objects,
// however long the chain of incrementals.
const (
	maxPatchedShare = 2                                // at most 1/maxPatchedShare of a position is patched
	maxPatches      = repository.MaxPatchesPerPosition // patches per position: the most a reader accepts
	maxPatchChunks  = 4                                // distinct chunks the patches of a position refer to
	// maxGroupPositions bounds the positions whose blocks share one chunk (a
	// restore reads that chunk once for each of them, through a small cache).
	maxGroupPositions = 64
)

// patchChunkSize is the most dirty data a group of positions collects into one
// chunk (a single position may bring more, up to half a chunk).
func patchChunkSize(chunkSize int64) int64 { return min(chunkSize, 1<<20) }

// patchable reports whether the dirty extents of the position at posStart, n bytes
// long, laid over the patches its parent already has there, stay within the limits
// of patching.
func patchable(have []repository.Patch, dirty []backends.Extent, posStart, n int64) bool {
	top := make([]repository.Patch, len(dirty))
	for k, e := range dirty {
		top[k] = repository.Patch{Offset: e.Start - posStart, Length: e.Length, Chunk: newPatchChunk}
	}
	all := repository.OverlayPatches(have, top)
	var patched int64
	chunks := map[string]bool{}
	for _, p := range all {
		patched += p.Length
		if p.Chunk != "" {
			chunks[p.Chunk] = true
		}
	}
	return patched*maxPatchedShare <= n && len(all) <= maxPatches && len(chunks) <= maxPatchChunks
}

// newPatchChunk stands for the chunk new patches refer to before it is stored.
const newPatchChunk = "new"

// patchPosition is a position to patch and its dirty extents, in order.
type patchPosition struct {
	index int
	dirty []backends.Extent
}

// patchGroup collects patchable positions, in the planner, until their dirty data
// fills a chunk.
type patchGroup struct {
	limit     int64
	positions []patchPosition
	data      int64 // bytes of the dirty extents that may hold data
}

// add takes position i with its dirty extents (which it copies). When the group
// has no room for them, it first hands out the group so far as a task.
func (g *patchGroup) add(i int, dirty []backends.Extent) (chunkTask, bool) {
	var data int64
	for _, e := range dirty {
		if !e.Zero {
			data += e.Length
		}
	}
	t, full := chunkTask{}, len(g.positions) > 0 && (g.data+data > g.limit || len(g.positions) == maxGroupPositions)
	if full {
		t, _ = g.flush()
	}
	g.positions = append(g.positions, patchPosition{index: i, dirty: slices.Clone(dirty)})
	g.data += data
	return t, full
}

// flush hands out the positions collected as one task, if there are any.
func (g *patchGroup) flush() (chunkTask, bool) {
	if len(g.positions) == 0 {
		return chunkTask{}, false
	}
	t := chunkTask{index: g.positions[0].index, action: actionPatch, group: g.positions}
	g.positions, g.data = nil, 0
	return t, true
}

// patchSet collects the patches of a backup's positions from its workers.
type patchSet struct {
	mu sync.Mutex
	m  map[int][]repository.Patch
}

func (s *patchSet) set(i int, ps []repository.Patch) {
	if len(ps) == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[int][]repository.Patch{}
	}
	s.m[i] = ps
}

// patchedPosition is a position of a patch group as it is stored: its dirty
// extents, the patches they become and how much of it they cover.
type patchedPosition struct {
	patchPosition
	// top are the new patches, laid over the parent's entry; until the chunk
	// they refer to is stored, its id is newPatchChunk.
	top        []repository.Patch
	dirtyBytes int64 // the dirty extents' length
	zeroBytes  int64 // of which read as zeroes
}

// patch reads the dirty extents of a group of positions into buf, stores the
// blocks that hold data as one chunk, and records each position as its parent's
// entry with patches laid over it. Positions an earlier attempt of the job stored
// are taken from its checkpoint.
func (r *backupRun) patch(ctx context.Context, group []patchPosition, buf []byte) error {
	todo := r.notResumed(group)
	reads := extentReads(todo)
	if err := r.readExtents(ctx, reads, buf); err != nil {
		return err
	}
	chunk := packPatches(todo, reads, buf, r.m.ChunkSize)
	id := ""
	if len(chunk) > 0 {
		var err error
		if id, err = r.store(ctx, chunk); err != nil {
			return err
		}
	}
	for _, pp := range todo {
		r.recordPatched(pp, id)
	}
	return nil
}

// notResumed returns the positions of group to patch: those an earlier attempt of
// the job did not store. The others are taken from its checkpoint.
func (r *backupRun) notResumed(group []patchPosition) []patchedPosition {
	var todo []patchedPosition
	for _, pp := range group {
		if r.fromCheckpoint(pp.index) {
			r.progress.bytesDone.Add(r.m.ChunkLen(pp.index))
			continue
		}
		todo = append(todo, patchedPosition{patchPosition: pp})
	}
	return todo
}

// extentRead is a dirty extent that may hold data, and where in the group's
// buffer it is read to.
type extentRead struct {
	e  backends.Extent
	at int
}

// extentReads lays the dirty extents of todo that may hold data out in the
// group's buffer, one after the other in order.
func extentReads(todo []patchedPosition) []extentRead {
	var reads []extentRead
	used := 0
	for _, pp := range todo {
		for _, e := range pp.dirty {
			if !e.Zero {
				reads = append(reads, extentRead{e: e, at: used})
				used += int(e.Length)
			}
		}
	}
	return reads
}

// readExtents makes the reads all at once: they are small (a bitmap's
// granularity, typically 64 KiB), so one after the other their round trips would
// be what the backup waits for.
func (r *backupRun) readExtents(ctx context.Context, reads []extentRead, buf []byte) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	for _, rd := range reads {
		safe.Go(g, func() error {
			if err := gctx.Err(); err != nil {
				return err
			}
			if _, err := r.src.ReadAt(gctx, buf[rd.at:rd.at+int(rd.e.Length)], rd.e.Start); err != nil {
				return fmt.Errorf("read %d bytes at offset %d: %w", rd.e.Length, rd.e.Start, err)
			}
			r.progress.bytesRead.Add(rd.e.Length)
			return nil
		})
	}
	return g.Wait()
}

// packPatches makes the patches of the positions in todo, whose dirty extents
// reads put into buf, and returns the chunk they refer to: the blocks read, less
// those that read as zeroes, moved together at the start of buf (a block only
// ever moves down, never over one not yet moved).
func packPatches(todo []patchedPosition, reads []extentRead, buf []byte, chunkSize int64) []byte {
	chunk := buf[:0]
	next := 0 // into reads
	for k := range todo {
		pp := &todo[k]
		posStart := int64(pp.index) * chunkSize
		for _, e := range pp.dirty {
			pp.dirtyBytes += e.Length
			patch := repository.Patch{Offset: e.Start - posStart, Length: e.Length}
			if !e.Zero {
				rd := reads[next]
				next++
				if data := buf[rd.at : rd.at+int(e.Length)]; !isZero(data) {
					patch.Chunk, patch.ChunkOffset = newPatchChunk, int64(len(chunk))
					chunk = append(chunk, data...)
				}
			}
			if patch.Chunk == "" {
				pp.zeroBytes += e.Length
			}
			pp.top = append(pp.top, patch)
		}
	}
	return chunk
}

// recordPatched records position pp as its parent's entry with pp's patches laid
// over the parent's there; id is the chunk its new patches refer to.
func (r *backupRun) recordPatched(pp patchedPosition, id string) {
	for j := range pp.top {
		if pp.top[j].Chunk == newPatchChunk {
			pp.top[j].Chunk = id
		}
	}
	base := r.parent.Chunks[pp.index]
	all := repository.OverlayPatches(r.parent.Patches[pp.index], pp.top)
	if base == "" { // zeroes laid over zeroes change nothing
		all = slices.DeleteFunc(all, func(p repository.Patch) bool { return p.Chunk == "" })
	}
	r.m.Chunks[pp.index] = base
	r.patches.set(pp.index, all)
	r.resume.record(pp.index, storedEntry{chunk: base, patches: all})
	n := r.m.ChunkLen(pp.index)
	r.progress.addPatched(pp.zeroBytes, n-pp.dirtyBytes)
	r.progress.bytesDone.Add(n)
}
