package repository

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"golang.org/x/sync/singleflight"
)

// PositionBuffers are the buffers a PositionReader reads into; a restore
// recycles them, since fresh 4 MiB buffers cost more in page faults than
// decompression. The zero value is ready to use; one goroutine uses it at a time.
type PositionBuffers struct {
	data  []byte // the position's content
	patch []byte // one chunk that patches refer to
}

// PatchCacheSize is the patch-chunk cache a restore uses: four chunks of patches
// as backups write them.
const PatchCacheSize = 4 << 20

// PositionReader reads the content of a backup's chunk positions: the base
// chunk or zeroes, with the position's patches laid over it. It is safe for
// concurrent use with one PositionBuffers per goroutine.
type PositionReader struct {
	repo  *Repository
	m     *Manifest
	cache *patchChunkCache // nil: every patch chunk is read for every position
}

// PositionReader returns a reader of backup m's positions. cacheBytes bounds the
// chunks that patches refer to kept between positions (0: none kept), which
// spares a reader that goes through positions roughly in order reading one
// patch chunk once per position.
func (r *Repository) PositionReader(m *Manifest, cacheBytes int64) *PositionReader {
	p := &PositionReader{repo: r, m: m}
	if cacheBytes > 0 {
		p.cache = &patchChunkCache{max: cacheBytes}
	}
	return p
}

// Read returns the content of chunk position i. Every chunk is checked against
// its id, and a chunk too short for what the manifest takes from it is corrupt
// (ErrCorrupt). The result lives in b; fetched counts the bytes of it that came
// from chunks rather than from zeroes.
func (p *PositionReader) Read(ctx context.Context, i int, b *PositionBuffers) (data []byte, fetched int64, err error) {
	repo, m, cache := p.repo, p.m, p.cache
	n := m.ChunkLen(i)
	if m.Chunks[i] != "" {
		id, _ := ParseChunkID(m.Chunks[i]) // every id was checked when the manifest was read
		if data, err = repo.GetChunk(ctx, id, b.data); err != nil {
			return nil, 0, err
		}
		if int64(len(data)) != n {
			return nil, 0, fmt.Errorf("chunk %s: %w: %d bytes, the manifest needs %d at offset %d", id, ErrCorrupt, len(data), n, int64(i)*m.ChunkSize)
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
		id, _ := ParseChunkID(p.Chunk)
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
				return nil, 0, fmt.Errorf("chunk %s: %w: %d bytes, the manifest takes %d at %d from it", id, ErrCorrupt, len(src), q.Length, q.ChunkOffset)
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
	id   ChunkID
	data []byte // shared: never written to
}

func (c *patchChunkCache) get(ctx context.Context, repo *Repository, id ChunkID) ([]byte, error) {
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
func (c *patchChunkCache) lookup(id ChunkID) ([]byte, bool) {
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
