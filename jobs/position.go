package jobs

import (
	"context"
	"fmt"
	"slices"

	"github.com/blockferry/blockferry/sinks"
)

// positionBuffers are the buffers readPosition reads into; a restore recycles
// them, since fresh 4 MiB buffers cost more in page faults than decompression.
type positionBuffers struct {
	data  []byte // the position's content
	patch []byte // one chunk that patches refer to
}

// readPosition reads chunk position i of backup m from the repository: its base
// chunk, or zeroes, with its patches laid over it. Every chunk is checked against
// its id, and a chunk too short for what the manifest takes from it is corrupt.
// The result lives in b.data.
func readPosition(ctx context.Context, repo *sinks.Repository, m *sinks.Manifest, i int, b *positionBuffers) ([]byte, error) {
	n := m.ChunkLen(i)
	var data []byte
	if m.Chunks[i] != "" {
		id, _ := sinks.ParseChunkID(m.Chunks[i]) // every id was checked when the manifest was read
		var err error
		if data, err = repo.GetChunk(ctx, id, b.data); err != nil {
			return nil, err
		}
		if int64(len(data)) != n {
			return nil, fmt.Errorf("chunk %s: %w: %d bytes, the manifest needs %d at offset %d", id, sinks.ErrCorrupt, len(data), n, int64(i)*m.ChunkSize)
		}
	} else {
		data = slices.Grow(b.data[:0], int(n))[:n]
		clear(data)
	}
	b.data = data
	patches := m.Patches[i]
	// The patches of a position refer to a few chunks: each is read once.
	var done []string
	for k, p := range patches {
		if p.Chunk == "" {
			clear(data[p.Offset:p.End()])
			continue
		}
		if slices.Contains(done, p.Chunk) {
			continue
		}
		id, _ := sinks.ParseChunkID(p.Chunk)
		src, err := repo.GetChunk(ctx, id, b.patch)
		if err != nil {
			return nil, err
		}
		b.patch = src
		for _, q := range patches[k:] {
			if q.Chunk != p.Chunk {
				continue
			}
			if q.ChunkOffset+q.Length > int64(len(src)) {
				return nil, fmt.Errorf("chunk %s: %w: %d bytes, the manifest takes %d at %d from it", id, sinks.ErrCorrupt, len(src), q.Length, q.ChunkOffset)
			}
			copy(data[q.Offset:q.End()], src[q.ChunkOffset:])
		}
		done = append(done, p.Chunk)
	}
	return data, nil
}
