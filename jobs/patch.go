package jobs

import (
	"context"
	"fmt"
	"slices"
	"sync"

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
	maxPatchedShare = 2  // at most 1/maxPatchedShare of a position is patched
	maxPatches      = 64 // patches per position
	maxPatchChunks  = 4  // distinct chunks the patches of a position refer to
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

// backupPatches reads the dirty extents of a group of positions into buf, stores
// the blocks that hold data as one chunk, and records each position as its
// parent's entry with patches laid over it. Positions an earlier attempt of the
// job stored are taken from its checkpoint.
func backupPatches(ctx context.Context, repo *repository.Repository, src backends.Source, m *repository.Manifest, patches *patchSet,
	p BackupParams, rs *resumeState, group []patchPosition, buf []byte, st *backupCounters, progress *Progress) error {
	// One read per dirty extent that may hold data, all at once: they are small
	// (a bitmap's granularity, typically 64 KiB), so one after the other their
	// round trips would be what the backup waits for.
	type read struct {
		e  backends.Extent
		at int // where in buf it goes
	}
	type patched struct {
		patchPosition
		dirtyBytes, zeroBytes int64
	}
	var todo []patched
	var reads []read
	used := 0
	for _, pp := range group {
		if e, ok := rs.stored(pp.index); ok {
			n := m.ChunkLen(pp.index)
			m.Chunks[pp.index] = e.chunk
			patches.set(pp.index, e.patches)
			st.resumed.Add(n)
			st.nResumed.Add(1)
			progress.bytesDone.Add(n)
			continue
		}
		for _, e := range pp.dirty {
			if !e.Zero {
				reads = append(reads, read{e: e, at: used})
				used += int(e.Length)
			}
		}
		todo = append(todo, patched{patchPosition: pp})
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	for _, r := range reads {
		g.Go(func() error {
			if err := gctx.Err(); err != nil {
				return err
			}
			if _, err := src.ReadAt(gctx, buf[r.at:r.at+int(r.e.Length)], r.e.Start); err != nil {
				return fmt.Errorf("read %d bytes at offset %d: %w", r.e.Length, r.e.Start, err)
			}
			st.read.Add(r.e.Length)
			progress.bytesRead.Add(r.e.Length)
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}

	// The patches, and the chunk: the blocks read, less those that read as
	// zeroes, moved together.
	tops := make([][]repository.Patch, len(todo))
	blob := buf[:0]
	next := 0 // into reads
	for k, pd := range todo {
		posStart := int64(pd.index) * m.ChunkSize
		for _, e := range pd.dirty {
			todo[k].dirtyBytes += e.Length
			patch := repository.Patch{Offset: e.Start - posStart, Length: e.Length}
			if !e.Zero {
				r := reads[next]
				next++
				if data := buf[r.at : r.at+int(e.Length)]; !isZero(data) {
					patch.Chunk, patch.ChunkOffset = newPatchChunk, int64(len(blob))
					blob = append(blob, data...) // moves down within buf, never up
				}
			}
			if patch.Chunk == "" {
				todo[k].zeroBytes += e.Length
			}
			tops[k] = append(tops[k], patch)
		}
	}
	id := ""
	if len(blob) > 0 {
		var err error
		if id, err = storeChunk(ctx, repo, blob, p.Compress, st, progress); err != nil {
			return err
		}
	}
	for k, pd := range todo {
		top := tops[k]
		for j := range top {
			if top[j].Chunk == newPatchChunk {
				top[j].Chunk = id
			}
		}
		base := p.Parent.Chunks[pd.index]
		all := repository.OverlayPatches(p.Parent.Patches[pd.index], top)
		if base == "" { // zeroes laid over zeroes change nothing
			all = slices.DeleteFunc(all, func(p repository.Patch) bool { return p.Chunk == "" })
		}
		m.Chunks[pd.index] = base
		patches.set(pd.index, all)
		rs.record(pd.index, storedEntry{chunk: base, patches: all})
		n := m.ChunkLen(pd.index)
		st.zero.Add(pd.zeroBytes)
		st.reused.Add(n - pd.dirtyBytes)
		st.nPatched.Add(1)
		progress.bytesDone.Add(n)
	}
	return nil
}
