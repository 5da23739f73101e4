package repository

import (
	"bytes"
	"context"
	"testing"
)

// TestGetChunkRecyclesNoPlaintext reads stored and compressed chunks one after
// another, with and without a buffer: object buffers are recycled between reads,
// so a result that were still part of a recycled buffer would be overwritten by
// the next read.
func TestGetChunkRecyclesNoPlaintext(t *testing.T) {
	ctx := context.Background()
	repo, _ := newFileRepository(t)
	text, noise := testData()
	noise2 := bytes.Clone(noise)
	noise2[0] ^= 0xff
	var ids []ChunkID
	contents := [][]byte{noise, text, noise2, text[:len(text)/2]}
	for _, c := range contents {
		res, err := repo.PutChunk(ctx, c, true)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, res.ID)
	}
	for _, withBuffer := range []bool{false, true} {
		var got [][]byte
		for round := 0; round < 3; round++ {
			for i, id := range ids {
				var buf []byte
				if withBuffer {
					buf = make([]byte, 0, len(noise))
				}
				data, err := repo.GetChunk(ctx, id, buf)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(data, contents[i]) {
					t.Fatalf("chunk %d read wrong", i)
				}
				got = append(got, data)
			}
		}
		for k, data := range got {
			if !bytes.Equal(data, contents[k%len(ids)]) {
				t.Errorf("buffer %v: result %d changed after later reads", withBuffer, k)
			}
		}
	}
}
