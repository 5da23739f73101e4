package overlay

import (
	"bytes"
	"context"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/blockferry/blockferry/internal/nbdserver"
)

// memBase is a read-only device in memory whose second half is a hole.
type memBase struct{ data []byte }

func (m memBase) Size() int64 { return int64(len(m.data)) }

func (m memBase) ReadAt(_ context.Context, p []byte, off int64) error {
	copy(p, m.data[off:])
	return nil
}

func (m memBase) Extents(_ context.Context, off, length int64, _ int) ([]nbdserver.Extent, error) {
	half := m.Size() / 2
	if off < half {
		return []nbdserver.Extent{{Length: min(half-off, length)}}, nil
	}
	return []nbdserver.Extent{{Length: min(m.Size()-off, length), Flags: nbdserver.StateHole | nbdserver.StateZero}}, nil
}

func newBase(size int) memBase {
	b := memBase{data: make([]byte, size)}
	for i := range size / 2 {
		b.data[i] = byte(i*13 + 1)
	}
	return b
}

func mustRead(t *testing.T, o *Overlay) []byte {
	t.Helper()
	got := make([]byte, o.Size())
	if err := o.ReadAt(context.Background(), got, 0); err != nil {
		t.Fatal(err)
	}
	return got
}

// TestOverlayMatchesAModel: random writes and zeroes, unaligned and across block
// edges, read back as a plain byte slice with the same operations would; they
// survive closing and reopening, and the base never changes.
func TestOverlayMatchesAModel(t *testing.T) {
	ctx := context.Background()
	const size = 1<<20 + 1000 // the last block is partial
	base := newBase(size)
	baseCopy := bytes.Clone(base.data)
	want := bytes.Clone(base.data)
	path := filepath.Join(t.TempDir(), "vm.overlay")
	o, err := Open(path, "b1", base)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for k := range 300 {
		off := rng.Int64N(size)
		n := min(rng.Int64N(3*BlockSize)+1, size-off)
		if k%4 == 3 {
			if err := o.Zero(ctx, off, n); err != nil {
				t.Fatal(err)
			}
			clear(want[off : off+n])
			continue
		}
		p := make([]byte, n)
		for i := range p {
			p[i] = byte(rng.IntN(255) + 1)
		}
		if err := o.WriteAt(ctx, p, off); err != nil {
			t.Fatal(err)
		}
		copy(want[off:], p)
	}
	if !bytes.Equal(mustRead(t, o), want) {
		t.Fatal("the overlay reads differently from the model")
	}
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(base.data, baseCopy) {
		t.Fatal("the base changed")
	}
	if o, err = Open(path, "b1", base); err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	if _, err := Open(path, "b1", base); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("an overlay opened twice: %v", err)
	}
	if !bytes.Equal(mustRead(t, o), want) {
		t.Fatal("the reopened overlay reads differently")
	}
	if _, err := Open(path, "b2", base); err == nil || !strings.Contains(err.Error(), "not backup b2") {
		t.Errorf("an overlay of b1 opened for b2: %v", err)
	}
}

func TestOverlayExtents(t *testing.T) {
	ctx := context.Background()
	base := newBase(64 * BlockSize)
	o, err := Open(filepath.Join(t.TempDir(), "o"), "b", base)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	if err := o.WriteAt(ctx, []byte{1}, 40*BlockSize+5); err != nil {
		t.Fatal(err)
	}
	got, err := o.Extents(ctx, 0, o.Size(), 1<<16)
	if err != nil {
		t.Fatal(err)
	}
	hole := uint32(nbdserver.StateHole | nbdserver.StateZero)
	want := []nbdserver.Extent{{Length: 32 * BlockSize}, {Length: 8 * BlockSize, Flags: hole}, {Length: BlockSize}, {Length: 23 * BlockSize, Flags: hole}}
	if len(got) != len(want) {
		t.Fatalf("extents %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("extents %v, want %v", got, want)
		}
	}
	// A limit stops the list at as many extents, from the base and the file.
	for limit := 1; limit <= len(want); limit++ {
		got, err := o.Extents(ctx, 0, o.Size(), limit)
		if err != nil || !slices.Equal(got, want[:limit]) {
			t.Errorf("at most %d extents: %v, %v; want %v", limit, got, err, want[:limit])
		}
	}
}
