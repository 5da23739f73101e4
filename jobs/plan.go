package jobs

import (
	"context"
	"fmt"

	"github.com/blockferry/blockferry/backends"
	"github.com/blockferry/blockferry/sinks/repository"
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
			// More than maxPatches dirty extents make a position no patch
			// (patchable needs one patch for each), so no more are kept: a source
			// may describe a chunk byte by byte, millions of extents.
			if e.Dirty && len(dirtyExtents) <= maxPatches {
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
