package repository

import (
	"bytes"
	"context"
	"testing"
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
