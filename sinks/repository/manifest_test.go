package repository

import (
	"slices"
	"strings"
	"testing"
)

func TestOverlayPatches(t *testing.T) {
	a, b, c := strings.Repeat("a", 64), strings.Repeat("b", 64), strings.Repeat("c", 64)
	for _, tc := range []struct {
		name      string
		base, top []Patch
		want      []Patch
	}{
		{"nothing under", nil, []Patch{{Offset: 10, Length: 5, Chunk: a}}, []Patch{{Offset: 10, Length: 5, Chunk: a}}},
		{"side by side", []Patch{{Offset: 0, Length: 10, Chunk: a}}, []Patch{{Offset: 20, Length: 5, Chunk: b}},
			[]Patch{{Offset: 0, Length: 10, Chunk: a}, {Offset: 20, Length: 5, Chunk: b}}},
		{"cut in the middle", []Patch{{Offset: 0, Length: 100, Chunk: a, ChunkOffset: 1000}}, []Patch{{Offset: 40, Length: 20, Chunk: b}},
			[]Patch{{Offset: 0, Length: 40, Chunk: a, ChunkOffset: 1000}, {Offset: 40, Length: 20, Chunk: b}, {Offset: 60, Length: 40, Chunk: a, ChunkOffset: 1060}}},
		{"covered whole", []Patch{{Offset: 10, Length: 10, Chunk: a}}, []Patch{{Offset: 0, Length: 30}},
			[]Patch{{Offset: 0, Length: 30}}},
		{"two over one", []Patch{{Offset: 0, Length: 100, Chunk: a}}, []Patch{{Offset: 0, Length: 10, Chunk: b}, {Offset: 90, Length: 20, Chunk: b, ChunkOffset: 10}},
			[]Patch{{Offset: 0, Length: 10, Chunk: b}, {Offset: 10, Length: 80, Chunk: a, ChunkOffset: 10}, {Offset: 90, Length: 20, Chunk: b, ChunkOffset: 10}}},
		{"one over two", []Patch{{Offset: 0, Length: 10, Chunk: a}, {Offset: 20, Length: 10, Chunk: c}}, []Patch{{Offset: 5, Length: 20, Chunk: b}},
			[]Patch{{Offset: 0, Length: 5, Chunk: a}, {Offset: 5, Length: 20, Chunk: b}, {Offset: 25, Length: 5, Chunk: c, ChunkOffset: 5}}},
		{"neighbours that continue each other merge", []Patch{{Offset: 0, Length: 10, Chunk: a}, {Offset: 10, Length: 10}}, []Patch{{Offset: 20, Length: 10}, {Offset: 30, Length: 5, Chunk: a, ChunkOffset: 30}},
			[]Patch{{Offset: 0, Length: 10, Chunk: a}, {Offset: 10, Length: 20}, {Offset: 30, Length: 5, Chunk: a, ChunkOffset: 30}}},
		{"same chunk, continued", []Patch{{Offset: 0, Length: 10, Chunk: a, ChunkOffset: 0}}, []Patch{{Offset: 10, Length: 10, Chunk: a, ChunkOffset: 10}},
			[]Patch{{Offset: 0, Length: 20, Chunk: a}}},
	} {
		got := OverlayPatches(tc.base, tc.top)
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s:\n got %+v\nwant %+v", tc.name, got, tc.want)
		}
		if err := validPatches(got, 1000); err != nil {
			t.Errorf("%s: result is not valid: %v", tc.name, err)
		}
	}
}

func TestManifestPatchesValidated(t *testing.T) {
	id := strings.Repeat("ab", 32)
	m := &Manifest{Version: ManifestVersion, ID: "x", Size: 2<<16 + 952, ChunkSize: 1 << 16, Chunks: []string{id, "", ""}}
	for _, tc := range []struct {
		name    string
		patches map[int][]Patch
		ok      bool
	}{
		{"none", nil, true},
		{"in the short last chunk", map[int][]Patch{2: {{Offset: 900, Length: 52, Chunk: id}}}, true},
		{"past the short last chunk", map[int][]Patch{2: {{Offset: 900, Length: 53, Chunk: id}}}, false},
		{"position out of range", map[int][]Patch{3: {{Offset: 0, Length: 1}}}, false},
		{"overlapping", map[int][]Patch{0: {{Offset: 0, Length: 10}, {Offset: 5, Length: 10}}}, false},
		{"unsorted", map[int][]Patch{0: {{Offset: 20, Length: 10}, {Offset: 0, Length: 10}}}, false},
		{"empty", map[int][]Patch{0: {{Offset: 0, Length: 0}}}, false},
		{"empty list", map[int][]Patch{0: {}}, false},
		{"bad chunk id", map[int][]Patch{0: {{Offset: 0, Length: 10, Chunk: "xyz"}}}, false},
		{"past a whole chunk", map[int][]Patch{0: {{Offset: 1<<16 - 5, Length: 6}}}, false},
		{"negative chunk offset", map[int][]Patch{0: {{Offset: 0, Length: 10, Chunk: id, ChunkOffset: -1}}}, false},
	} {
		m.Patches = tc.patches
		if err := m.validate(); (err == nil) != tc.ok {
			t.Errorf("%s: validate: %v, want ok=%t", tc.name, err, tc.ok)
		}
	}
}

func TestPatchBoundsDoNotOverflow(t *testing.T) {
	id := strings.Repeat("ab", 32)
	const huge = 1<<63 - 10
	for _, p := range []Patch{
		{Offset: 10, Length: huge},
		{Offset: huge, Length: 20},
		{Offset: 0, Length: 10, Chunk: id, ChunkOffset: huge},
		{Offset: 0, Length: 10, Chunk: id, ChunkOffset: MaxChunkSize - 9},
	} {
		if err := validPatches([]Patch{p}, 1000); err == nil {
			t.Errorf("patch %+v accepted", p)
		}
	}
}
