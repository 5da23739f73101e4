package repository

import (
	"bytes"
	"context"
	"math/rand/v2"
	"testing"

	"github.com/blockferry/blockferry/sinks/file"
)

func TestPatchChunkCache(t *testing.T) {
	ctx := context.Background()
	repo, store := newFileRepository(t)
	var ids []ChunkID
	for k := range 3 {
		res, err := repo.PutChunk(ctx, bytes.Repeat([]byte{byte(k + 1)}, 1000), true)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, res.ID)
	}
	c := &patchChunkCache{max: 2000} // room for two
	get := func(k int) {
		t.Helper()
		data, err := c.get(ctx, repo, ids[k])
		if err != nil || len(data) != 1000 || data[0] != byte(k+1) {
			t.Fatalf("chunk %d: %d bytes, %v", k, len(data), err)
		}
	}
	cached := func() (out []int) {
		for _, e := range c.entries {
			for k, id := range ids {
				if e.id == id {
					out = append(out, k)
				}
			}
		}
		return out
	}
	get(0)
	get(1)
	get(0) // 0 becomes the most recently used
	get(2) // evicts 1
	if got := cached(); len(got) != 2 || got[0] != 0 || got[1] != 2 || c.size != 2000 {
		t.Errorf("cached %v (%d bytes), want [0 2] (2000)", got, c.size)
	}
	// A chunk the cache holds is not read again: gone from the store, still served.
	if err := store.Delete(ctx, "chunks/"+ids[2].String()[:2]+"/"+ids[2].String()); err != nil {
		t.Fatal(err)
	}
	get(2)
}

// TestPositionReaderRecyclesBuffers reads positions whose chunks alternate between
// stored as is (random bytes: the content is part of the object read) and
// compressed, with one PositionBuffers, as a restore does: an object read into a
// recycled buffer must never land on the content of a position just returned.
func TestPositionReaderRecyclesBuffers(t *testing.T) {
	ctx := context.Background()
	for _, key := range [][]byte{nil, []byte("a key of the test")} {
		store, err := file.Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		repo, err := Init(ctx, store, InitOptions{ChunkSize: 64 << 10, Compression: "zstd", Key: key})
		if err != nil {
			t.Fatal(err)
		}
		const size = 64 << 10
		rng := rand.NewChaCha8([32]byte{9})
		m := &Manifest{ChunkSize: size, Size: 6 * size, Chunks: make([]string, 6)}
		want := make([][]byte, len(m.Chunks))
		for i := range want {
			want[i] = make([]byte, size)
			if i%3 == 0 {
				rng.Read(want[i]) // incompressible: stored as is
			} else {
				copy(want[i], bytes.Repeat([]byte{byte(i), 'x', 'y'}, size/3))
			}
			res, err := repo.PutChunk(ctx, want[i], true)
			if err != nil {
				t.Fatal(err)
			}
			m.Chunks[i] = res.ID.String()
		}
		p := repo.PositionReader(m, 0)
		var b PositionBuffers
		for round := range 2 {
			for i := range want {
				got, _, err := p.Read(ctx, i, &b)
				if err != nil {
					t.Fatalf("key %v, round %d, position %d: %v", key != nil, round, i, err)
				}
				if !bytes.Equal(got, want[i]) {
					t.Fatalf("key %v, round %d, position %d: content differs", key != nil, round, i)
				}
			}
		}
	}
}
