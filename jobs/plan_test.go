package jobs

import (
	"context"
	"testing"

	"github.com/blockferry/blockferry/backends"
	"github.com/blockferry/blockferry/sinks"
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
	m := &sinks.Manifest{Size: src.size, ChunkSize: cs, Chunks: make([]string, 6)}
	plan := func(incremental bool) []chunkAction {
		tasks := make(chan chunkTask, 10)
		if err := planChunks(context.Background(), src, m, incremental, tasks); err != nil {
			t.Fatal(err)
		}
		close(tasks)
		var got []chunkAction
		for task := range tasks {
			if task.index != len(got) {
				t.Fatalf("task for chunk %d out of order", task.index)
			}
			got = append(got, task.action)
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
	check("full", plan(false), []chunkAction{actionZero, actionRead, actionRead, actionZero, actionRead, actionRead})
	check("incremental", plan(true), []chunkAction{actionReuse, actionRead, actionReuse, actionZero, actionReuse, actionReuse})
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
