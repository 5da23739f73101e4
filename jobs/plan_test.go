package jobs

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/blockferry/blockferry/backends"
	"github.com/blockferry/blockferry/internal/testutil"
	"github.com/blockferry/blockferry/sinks/repository"
)

// extentSource serves a fixed extent map, a few extents per call, as an NBD server
// that answers block status partially does.
type extentSource struct {
	backends.Source
	size    int64
	extents []backends.Extent
	perCall int
}

func (s *extentSource) Size() int64 { return s.size }

func (s *extentSource) Extents(_ context.Context, start, length int64) ([]backends.Extent, error) {
	var out []backends.Extent
	for _, e := range s.extents {
		if e.End() <= start || e.Start >= start+length {
			continue
		}
		if e.Start < start {
			e.Length -= start - e.Start
			e.Start = start
		}
		out = append(out, e)
		if len(out) == s.perCall {
			break
		}
	}
	return out, nil
}

func TestPlanChunks(t *testing.T) {
	const cs = 1 << 16
	src := &extentSource{size: 5*cs + 100, perCall: 2, extents: []backends.Extent{
		{Start: 0, Length: cs, Zero: true},                   // 0: hole
		{Start: cs, Length: cs / 2, Dirty: true},             // 1: dirty data
		{Start: cs + cs/2, Length: cs, Zero: true},           // 1, 2: zero
		{Start: 2*cs + cs/2, Length: cs / 2},                 // 2: clean data
		{Start: 3 * cs, Length: cs, Dirty: true, Zero: true}, // 3: dirty, zero
		{Start: 4 * cs, Length: cs + 100},                    // 4, 5 (short): clean data
	}}
	m := &repository.Manifest{Size: src.size, ChunkSize: cs, Chunks: make([]string, 6)}
	var dirty1 []backends.Extent // what the plan gave chunk 1 to patch
	plan := func(parent *repository.Manifest) []chunkAction {
		tasks := make(chan chunkTask, 10)
		if err := planChunks(context.Background(), src, m, parent, tasks); err != nil {
			t.Fatal(err)
		}
		close(tasks)
		got := make([]chunkAction, len(m.Chunks))
		seen := map[int]bool{}
		see := func(i int) {
			if seen[i] {
				t.Fatalf("chunk %d planned twice", i)
			}
			seen[i] = true
		}
		for task := range tasks {
			if task.action != actionPatch {
				see(task.index)
				got[task.index] = task.action
				continue
			}
			for _, pp := range task.group {
				see(pp.index)
				got[pp.index] = actionPatch
				if pp.index == 1 {
					dirty1 = pp.dirty
				}
			}
		}
		if len(seen) != len(m.Chunks) {
			t.Fatalf("%d of %d chunks planned", len(seen), len(m.Chunks))
		}
		return got
	}
	check := func(name string, got, want []chunkAction) {
		if len(got) != len(want) {
			t.Fatalf("%s: %v, want %v", name, got, want)
		}
		for i := range want {
			if got[i] != want[i] {
				t.Errorf("%s: chunk %d: %v, want %v", name, i, got[i], want[i])
			}
		}
	}
	check("full", plan(nil), []chunkAction{actionZero, actionRead, actionRead, actionZero, actionRead, actionRead})
	parent := &repository.Manifest{Size: src.size, ChunkSize: cs, Chunks: make([]string, 6)}
	// Half of chunk 1 is dirty: patched, reading only that half.
	check("incremental", plan(parent), []chunkAction{actionReuse, actionPatch, actionReuse, actionZero, actionReuse, actionReuse})
	if want := []backends.Extent{{Start: cs, Length: cs / 2, Dirty: true}}; !slices.Equal(dirty1, want) {
		t.Errorf("chunk 1 patches %v, want %v", dirty1, want)
	}
	// The parent already patched the other half of chunk 1 (not overlapping the
	// dirty one): together more than half of it, so it is read whole.
	parent.Patches = map[int][]repository.Patch{1: {{Offset: cs/2 + 4096, Length: 4096, Chunk: strings.Repeat("ab", 32)}}}
	check("incremental over patches", plan(parent), []chunkAction{actionReuse, actionRead, actionReuse, actionZero, actionReuse, actionReuse})
	// Patches the dirty range replaces entirely do not count.
	parent.Patches = map[int][]repository.Patch{1: {{Offset: 4096, Length: 4096, Chunk: strings.Repeat("ab", 32)}}}
	check("incremental over replaced patches", plan(parent), []chunkAction{actionReuse, actionPatch, actionReuse, actionZero, actionReuse, actionReuse})
}

// fineSource describes its disk byte by byte, dirty and clean in turn, at most
// cap(buf) extents a call, in a buffer it reuses: the finest map an NBD server can
// send, a few MiB a window.
type fineSource struct {
	backends.Source
	size int64
	buf  []backends.Extent
}

func (s *fineSource) Size() int64 { return s.size }

func (s *fineSource) Extents(_ context.Context, start, length int64) ([]backends.Extent, error) {
	out := s.buf[:0]
	for pos := start; pos < min(start+length, s.size) && len(out) < cap(s.buf); pos++ {
		out = append(out, backends.Extent{Start: pos, Length: 1, Dirty: pos%2 == 0})
	}
	return out, nil
}

// TestPlanChunksKeepsFewDirtyExtents: a position described byte by byte is read
// whole, as one with more dirty extents than patches allows, without keeping its
// half a million dirty extents (16 MiB, 1 GiB at 64 MiB chunks) to decide that:
// with them, planning this 1 MiB position allocated 107 MiB.
func TestPlanChunksKeepsFewDirtyExtents(t *testing.T) {
	const cs = 1 << 20
	src := &fineSource{size: cs, buf: make([]backends.Extent, 0, 1<<12)}
	m := &repository.Manifest{Size: cs, ChunkSize: cs, Chunks: make([]string, 1)}
	parent := &repository.Manifest{Size: cs, ChunkSize: cs, Chunks: make([]string, 1)}
	tasks := make(chan chunkTask, 1)
	var err error
	n := testutil.Allocated(func() { err = planChunks(context.Background(), src, m, parent, tasks) })
	if err != nil {
		t.Fatal(err)
	}
	if task := <-tasks; task.action != actionRead {
		t.Errorf("action %d, want read (%d)", task.action, actionRead)
	}
	if n > 1<<20 {
		t.Errorf("planning one position allocated %d KiB", n>>10)
	}
}

func TestPatchable(t *testing.T) {
	const n = 1 << 20
	id := func(k int) string { return strings.Repeat(string(rune('a'+k)), 64) }
	extents := func(k int, length int64) []backends.Extent { // k extents of length, 8 KiB apart
		var out []backends.Extent
		for j := range k {
			out = append(out, backends.Extent{Start: int64(j) * 8192, Length: length, Dirty: true})
		}
		return out
	}
	var fourChunks []repository.Patch
	for k := range 4 {
		fourChunks = append(fourChunks, repository.Patch{Offset: n/2 + int64(k)*4096, Length: 4096, Chunk: id(k)})
	}
	for _, c := range []struct {
		name  string
		have  []repository.Patch
		dirty []backends.Extent
		want  bool
	}{
		{"one block", nil, extents(1, 4096), true},
		{"exactly half", nil, []backends.Extent{{Start: 0, Length: n / 2, Dirty: true}}, true},
		{"more than half", nil, []backends.Extent{{Start: 0, Length: n/2 + 512, Dirty: true}}, false},
		{"as many patches as allowed", nil, extents(maxPatches, 4096), true},
		{"too many patches", nil, extents(maxPatches+1, 4096), false},
		{"a fifth chunk", fourChunks, extents(1, 4096), false},
		{"a fifth chunk replacing one", fourChunks, []backends.Extent{{Start: n / 2, Length: 4096, Dirty: true}}, true},
	} {
		if got := patchable(c.have, c.dirty, 0, n); got != c.want {
			t.Errorf("%s: patchable %t, want %t", c.name, got, c.want)
		}
	}
}

func TestIsZero(t *testing.T) {
	b := make([]byte, 200<<10)
	if !isZero(b) {
		t.Fatal("zeroes not zero")
	}
	b[len(b)-1] = 1
	if isZero(b) {
		t.Fatal("last byte set, still zero")
	}
}

// BenchmarkPlanChunks plans an incremental of a 1 TiB disk with 10,000 scattered
// dirty 64 KiB blocks over a parent without patches: the block status walk, the
// patch decisions and the grouping, without reading.
//
//	go test -run '^$' -bench PlanChunks -count 6 ./jobs | tee new.txt; benchstat old.txt new.txt
func BenchmarkPlanChunks(b *testing.B) {
	const (
		size  = 1 << 40
		cs    = 4 << 20
		block = 64 << 10
		dirty = 10000
	)
	var at []int64
	for k := range int64(dirty) {
		at = append(at, (k*(size/dirty)+k*7919*block)%size/block*block) // scattered, block-aligned
	}
	slices.Sort(at)
	at = slices.Compact(at)
	var extents []backends.Extent
	pos := int64(0)
	for _, a := range at {
		if a > pos {
			extents = append(extents, backends.Extent{Start: pos, Length: a - pos})
		}
		extents = append(extents, backends.Extent{Start: a, Length: block, Dirty: true})
		pos = a + block
	}
	extents = append(extents, backends.Extent{Start: pos, Length: size - pos})
	src := &sortedExtents{size: size, extents: extents}
	m := &repository.Manifest{Size: size, ChunkSize: cs, Chunks: make([]string, size/cs)}
	parent := &repository.Manifest{Size: size, ChunkSize: cs, Chunks: make([]string, size/cs)}
	b.SetBytes(size)
	for b.Loop() {
		tasks := make(chan chunkTask, 1024)
		done := make(chan int)
		go func() {
			n := 0
			for t := range tasks {
				n += max(len(t.group), 1)
			}
			done <- n
		}()
		if err := planChunks(context.Background(), src, m, parent, tasks); err != nil {
			b.Fatal(err)
		}
		close(tasks)
		if n := <-done; n != len(m.Chunks) {
			b.Fatalf("%d positions planned, want %d", n, len(m.Chunks))
		}
	}
}

// sortedExtents serves a sorted, contiguous extent map window by window.
type sortedExtents struct {
	backends.Source
	size    int64
	extents []backends.Extent
}

func (s *sortedExtents) Size() int64 { return s.size }

func (s *sortedExtents) Extents(_ context.Context, start, length int64) ([]backends.Extent, error) {
	k, _ := slices.BinarySearchFunc(s.extents, start, func(e backends.Extent, t int64) int {
		switch {
		case e.End() <= t:
			return -1
		case e.Start > t:
			return 1
		}
		return 0
	})
	var out []backends.Extent
	for ; k < len(s.extents) && s.extents[k].Start < start+length; k++ {
		e := s.extents[k]
		if e.Start < start {
			e.Length -= start - e.Start
			e.Start = start
		}
		out = append(out, e)
	}
	return out, nil
}
