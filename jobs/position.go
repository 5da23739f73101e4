package jobs

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"golang.org/x/sync/singleflight"

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
// The chunks patches refer to come through cache when it is not nil. The result
// lives in b.data; fetched counts the bytes of it that came from chunks.
func readPosition(ctx context.Context, repo *sinks.Repository, m *sinks.Manifest, i int, b *positionBuffers, cache *patchChunkCache) (data []byte, fetched int64, err error) {
	n := m.ChunkLen(i)
	if m.Chunks[i] != "" {
		id, _ := sinks.ParseChunkID(m.Chunks[i]) // every id was checked when the manifest was read
		if data, err = repo.GetChunk(ctx, id, b.data); err != nil {
			return nil, 0, err
		}
		if int64(len(data)) != n {
			return nil, 0, fmt.Errorf("chunk %s: %w: %d bytes, the manifest needs %d at offset %d", id, sinks.ErrCorrupt, len(data), n, int64(i)*m.ChunkSize)
		}
		fetched = n
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
			if m.Chunks[i] != "" {
				fetched -= p.Length
			}
			continue
		}
		if slices.Contains(done, p.Chunk) {
			continue
		}
		id, _ := sinks.ParseChunkID(p.Chunk)
		var src []byte
		if cache != nil {
			src, err = cache.get(ctx, repo, id)
		} else if src, err = repo.GetChunk(ctx, id, b.patch); err == nil {
			b.patch = src
		}
		if err != nil {
			return nil, 0, err
		}
		for _, q := range patches[k:] {
			if q.Chunk != p.Chunk {
				continue
			}
			if q.ChunkOffset+q.Length > int64(len(src)) {
				return nil, 0, fmt.Errorf("chunk %s: %w: %d bytes, the manifest takes %d at %d from it", id, sinks.ErrCorrupt, len(src), q.Length, q.ChunkOffset)
			}
			copy(data[q.Offset:q.End()], src[q.ChunkOffset:])
			if m.Chunks[i] == "" {
				fetched += q.Length // over a base chunk, the patch replaces bytes counted with it
			}
		}
		done = append(done, p.Chunk)
	}
	return data, fetched, nil
}

// patchChunkCache keeps the last chunks that patches referred to while a restore
// runs. The changed blocks of up to maxGroupPositions neighbouring positions share
// one chunk, and a restore goes through positions roughly in order, so a few
// entries spare reading (and checking) that chunk once for every position.
type patchChunkCache struct {
	max int64 // bytes

	mu      sync.Mutex
	entries []cachedChunk // least recently used first
	size    int64
	flight  singleflight.Group
}

type cachedChunk struct {
	id   sinks.ChunkID
	data []byte // shared: never written to
}

// patchCacheSize bounds a restore's cache: four chunks of patches as backups
// write them.
const patchCacheSize = 4 << 20

func (c *patchChunkCache) get(ctx context.Context, repo *sinks.Repository, id sinks.ChunkID) ([]byte, error) {
	if data, ok := c.lookup(id); ok {
		return data, nil
	}
	v, err, _ := c.flight.Do(id.String(), func() (any, error) {
		// A flight for the same id may have ended between the lookup and now.
		if data, ok := c.lookup(id); ok {
			return data, nil
		}
		data, err := repo.GetChunk(ctx, id, nil)
		if err != nil {
			return nil, err
		}
		if int64(len(data)) <= c.max {
			c.mu.Lock()
			c.entries = append(c.entries, cachedChunk{id: id, data: data})
			for c.size += int64(len(data)); c.size > c.max; c.entries = c.entries[1:] {
				c.size -= int64(len(c.entries[0].data))
			}
			c.mu.Unlock()
		}
		return data, nil
	})
	if err != nil {
		return nil, err
	}
	return v.([]byte), nil
}

// lookup returns a cached chunk and marks it the most recently used.
func (c *patchChunkCache) lookup(id sinks.ChunkID) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, e := range c.entries {
		if e.id == id {
			c.entries = append(append(c.entries[:k:k], c.entries[k+1:]...), e)
			return e.data, true
		}
	}
	return nil, false
}
