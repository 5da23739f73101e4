package repository

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/blockferry/blockferry/internal/testutil"
	"github.com/blockferry/blockferry/sinks/file"
)

// repeat is a run of the same text in a crafted object.
type repeat struct {
	s string
	n int
}

// zstdObject is a stored object (plain envelope, zstd) of the JSON parts given,
// strings or repeats, compressed as a stream: a bomb that inflates to hundreds of
// MiB is a few KiB here and never exists whole in memory.
func zstdObject(t *testing.T, parts ...any) []byte {
	t.Helper()
	var out bytes.Buffer
	out.Write([]byte{envelopePlain, compressionZstd})
	w, err := zstd.NewWriter(&out, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range parts {
		switch p := p.(type) {
		case string:
			w.Write([]byte(p))
		case repeat:
			block := []byte(strings.Repeat(p.s, max(1, (1<<20)/len(p.s))))
			per := len(block) / len(p.s)
			for n := p.n; n > 0; n -= per {
				w.Write(block[:min(n, per)*len(p.s)])
			}
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

func testRepo(t *testing.T) *Repository {
	t.Helper()
	store, err := file.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	repo, err := Init(context.Background(), store, InitOptions{ChunkSize: 4 << 20, Compression: "zstd"})
	if err != nil {
		t.Fatal(err)
	}
	return repo
}

// decodeLimit is what reading one crafted object may allocate: its budget of a few
// MiB, decoder buffers and a margin; the bombs inflate to 256 MiB and more.
const decodeLimit = 32 << 20

const bombSize = 256 << 20

func TestManifestBombsFailWithinBudget(t *testing.T) {
	hdr := func(size, chunkSize int64) string {
		return fmt.Sprintf(`{"version":1,"id":"b1","disk":"d","kind":"full","size":%d,"chunk_size":%d`, size, chunkSize)
	}
	id := strings.Repeat("ab", 32)
	for _, tc := range []struct {
		name  string
		parts []any
		want  string // in the error
		large bool   // also wraps ErrDiskTooLarge
	}{
		{"a huge label after size", []any{hdr(1<<20, 1<<20), `,"labels":{"x":"`, repeat{"A", bombSize}, `"},"chunks":[""]}`},
			"more JSON than 1 chunk positions", false},
		{"a huge label before size", []any{`{"labels":{"x":"`, repeat{"A", bombSize}, `"},"size":1,"chunk_size":65536,"chunks":[""]}`},
			"before its size and chunk_size", false},
		{"whitespace between entries", []any{hdr(8<<20, 1<<20), `,"chunks":[""`, repeat{" ", bombSize}, `]}`},
			"more JSON than 8 chunk positions", false},
		{"more chunk entries than positions", []any{hdr(4<<20, 4<<20), `,"chunks":[`, repeat{`"",`, bombSize / 3}, `""]}`},
			"chunks: more than 1 entries", false},
		{"a huge chunk entry", []any{hdr(4<<20, 4<<20), `,"chunks":["`, repeat{"a", bombSize}, `"]}`},
			"more JSON than 1 chunk positions", false},
		{"chunks before size", []any{`{"chunks":[`, repeat{`"",`, bombSize / 3}, `""],"size":1,"chunk_size":65536}`},
			"before its size and chunk_size", false},
		{"too many patches for a position", []any{hdr(4<<20, 4<<20), `,"chunks":["` + id + `"],"patches":{"0":[`,
			repeat{`{"offset":0,"length":1},`, bombSize / 24}, `{"offset":0,"length":1}]}}`},
			"patches: chunk position 0: more than 64 entries", false},
		{"patches of a position past the end", []any{hdr(4<<20, 4<<20), `,"chunks":[""],"patches":{"1":[{"offset":0,"length":1}]}}`},
			`key "1": not a chunk position below 1`, false},
		{"an absurd size", []any{hdr(1<<63-1, 4<<20), `,"chunks":[`, repeat{`"",`, bombSize / 3}, `""]}`},
			"disk too large", true},
		{"too many positions for the chunk size", []any{hdr(2<<40, 64<<10), `,"chunks":[`, repeat{`"",`, bombSize / 3}, `""]}`},
			"use a chunk size of at least 131072", true},
		{"two objects", []any{hdr(0, 1<<20), `,"chunks":[]}`, repeat{`{}`, bombSize / 2}},
			"data after the JSON object", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			repo := testRepo(t)
			obj := zstdObject(t, tc.parts...)
			if err := repo.store.Put(context.Background(), manifestName("b1"), obj); err != nil {
				t.Fatal(err)
			}
			var err error
			n := testutil.Allocated(func() { _, err = repo.Manifest(context.Background(), "b1") })
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), tc.want) || errors.Is(err, ErrDiskTooLarge) != tc.large {
				t.Errorf("%d-byte object: error %v; want corrupt, %q", len(obj), err, tc.want)
			}
			if n > decodeLimit {
				t.Errorf("%d-byte object: reading it allocated %d MiB", len(obj), n>>20)
			}
		})
	}
}

func TestCheckpointBombsFailWithinBudget(t *testing.T) {
	hdr := `{"job_id":"j1","backup_id":"b1","disk":"d","size":8388608,"chunk_size":4194304`
	for _, tc := range []struct {
		name  string
		parts []any
		want  string
	}{
		{"more done entries than positions", []any{hdr, `,"done":{"0":"","1":"",`, repeat{`"1":"",`, bombSize / 7}, `"1":""}}`},
			"done: more than 2 entries"},
		{"a repeated position", []any{hdr, `,"done":{"0":"","0":""}}`}, `done: key "0": not a chunk position below 2, or repeated`},
		{"a huge done entry", []any{hdr, `,"done":{"0":"`, repeat{"f", bombSize}, `"}}`}, "more JSON than 2 chunk positions"},
		{"a field twice", []any{hdr, `,"size":1}`}, `field "size" appears twice`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			repo := testRepo(t)
			if err := repo.store.Put(context.Background(), checkpointName("j1"), zstdObject(t, tc.parts...)); err != nil {
				t.Fatal(err)
			}
			var err error
			n := testutil.Allocated(func() { _, err = repo.LoadCheckpoint(context.Background(), "j1") })
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v; want corrupt, %q", err, tc.want)
			}
			if n > decodeLimit {
				t.Errorf("reading it allocated %d MiB", n>>20)
			}
		})
	}
}

// TestIndexFieldOrder: the per-position fields may come before size and
// chunk_size, within the header's budget, and null stands for empty.
func TestIndexFieldOrder(t *testing.T) {
	id := strings.Repeat("cd", 32)
	repo := testRepo(t)
	ctx := context.Background()
	for name, obj := range map[string]string{
		"b1": `{"patches":{"1":[{"offset":10,"length":5}]},"chunks":["` + id + `",""],"id":"b1","version":1,"size":80000,"chunk_size":65536}`,
		"b2": `{"version":1,"id":"b2","size":80000,"chunk_size":65536,"chunks":["` + id + `",""],"patches":{"1":[{"offset":10,"length":5}]}}`,
	} {
		if err := repo.store.Put(ctx, manifestName(name), zstdObject(t, obj)); err != nil {
			t.Fatal(err)
		}
		m, err := repo.Manifest(ctx, name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(m.Chunks) != 2 || m.Chunks[0] != id || len(m.Patches[1]) != 1 || m.Patches[1][0].End() != 15 || m.Size != 80000 {
			t.Errorf("%s: read %+v", name, m)
		}
	}
	if err := repo.store.Put(ctx, manifestName("b3"), zstdObject(t, `{"version":1,"id":"b3","size":0,"chunk_size":65536,"chunks":null,"patches":null}`)); err != nil {
		t.Fatal(err)
	}
	if m, err := repo.Manifest(ctx, "b3"); err != nil || len(m.Chunks) != 0 || len(m.Patches) != 0 {
		t.Errorf("null fields: %+v, %v", m, err)
	}
}

// TestManifestRoundTrip: what PutManifest writes, Manifest reads back the same,
// and a manifest over the format's limits is not written.
func TestManifestRoundTrip(t *testing.T) {
	repo := testRepo(t)
	ctx := context.Background()
	a, b := strings.Repeat("a1", 32), strings.Repeat("b2", 32)
	m := &Manifest{ID: "r1", Disk: "vm/vda", Kind: "incremental", Parent: "r0", Labels: map[string]string{"vm": "1"},
		Size: 3*65536 + 100, ChunkSize: 65536, Chunks: []string{a, "", a, b},
		Patches: map[int][]Patch{2: {{Offset: 0, Length: 512, Chunk: b, ChunkOffset: 100}, {Offset: 4096, Length: 10}}}}
	if err := repo.PutManifest(ctx, m); err != nil {
		t.Fatal(err)
	}
	got, err := repo.Manifest(ctx, "r1")
	if err != nil {
		t.Fatal(err)
	}
	want, _ := m.marshal()
	have, _ := got.marshal()
	if !bytes.Equal(want, have) {
		t.Errorf("read back\n%s\nwant\n%s", have, want)
	}

	tooMany := make([]Patch, MaxPatchesPerPosition+1)
	for k := range tooMany {
		tooMany[k] = Patch{Offset: int64(2 * k), Length: 1}
	}
	for name, bad := range map[string]*Manifest{
		"too large a disk": {ID: "r2", Size: MaxDiskSize + 1, ChunkSize: MaxChunkSize},
		"too many patches": {ID: "r3", Size: 65536, ChunkSize: 65536, Chunks: []string{a}, Patches: map[int][]Patch{0: tooMany}},
		"too large labels": {ID: "r4", Size: 100, ChunkSize: 65536, Chunks: []string{a}, Labels: map[string]string{"x": strings.Repeat("y", headerBudget)}},
	} {
		if err := repo.PutManifest(ctx, bad); err == nil {
			t.Errorf("%s: written", name)
		}
	}
}

func TestCheckDiskSize(t *testing.T) {
	for _, tc := range []struct {
		size, chunkSize int64
		ok              bool
	}{
		{0, 64 << 10, true},
		{MaxDiskSize, 4 << 20, true},
		{MaxDiskSize + 1, MaxChunkSize, false},
		{1<<63 - 1, 4 << 20, false},
		{-1, 4 << 20, false},
		{1 << 40, MinChunkSize, true},
		{1<<40 + 1, MinChunkSize, false},
		{MaxDiskSize, 4 << 20 / 2, false},
	} {
		err := CheckDiskSize(tc.size, tc.chunkSize)
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrDiskTooLarge)) {
			t.Errorf("CheckDiskSize(%d, %d) = %v", tc.size, tc.chunkSize, err)
		}
	}
}
