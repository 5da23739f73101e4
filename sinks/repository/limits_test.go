package repository

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/blockferry/blockferry/internal/testutil"
	"github.com/blockferry/blockferry/sinks"
	"github.com/blockferry/blockferry/sinks/file"
)

// TestOversizedObjectsAreRefusedUnread: an object one byte larger than its kind
// may be, planted in the store (a sparse file: it costs nothing on disk), is
// refused as corrupt before it is read, by every reader of that kind. Reading
// it would have allocated its size: a 1 GiB manifest, a 64 MiB chunk.
func TestOversizedObjectsAreRefusedUnread(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	store, err := file.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	repo, err := Init(ctx, store, InitOptions{ChunkSize: 4 << 20, Compression: "zstd"})
	if err != nil {
		t.Fatal(err)
	}
	var id ChunkID
	id[0] = 0xab
	index := repo.indexName("d", "b1")
	for _, tc := range []struct {
		name  string
		limit int64
		read  func() error
	}{
		{chunkName(id), MaxChunkObject, func() error { _, err := repo.GetChunk(ctx, id, nil); return err }},
		{manifestName("b1"), MaxMetadataObject, func() error { _, err := repo.Manifest(ctx, "b1"); return err }},
		{checkpointName("j1"), MaxMetadataObject, func() error { _, err := repo.LoadCheckpoint(ctx, "j1"); return err }},
		{condemnedPrefix + "l1", MaxMetadataObject, func() error { _, err := repo.loadIDs(ctx, condemnedPrefix+"l1"); return err }},
		{index, MaxIndexObject, func() error { _, err := repo.readIndexEntry(ctx, index, "b1"); return err }},
		{gcSettingsName, MaxSmallObject, func() error { _, err := repo.Grace(ctx); return err }},
		{configName, MaxSmallObject, func() error { _, err := Open(ctx, store, nil); return err }},
	} {
		t.Run(strings.ReplaceAll(tc.name, "/", "_"), func(t *testing.T) {
			p := filepath.Join(dir, filepath.FromSlash(tc.name))
			if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
				t.Fatal(err)
			}
			f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY, 0o600)
			if err == nil {
				err = errors.Join(f.Truncate(tc.limit+1), f.Close())
			}
			if err != nil {
				t.Fatal(err)
			}
			var readErr error
			n := testutil.Allocated(func() { readErr = tc.read() })
			if !errors.Is(readErr, ErrCorrupt) || !errors.Is(readErr, sinks.ErrInvalidObject) {
				t.Errorf("reading %s of %d bytes: %v; want corrupt, an invalid stored object", tc.name, tc.limit+1, readErr)
			}
			if n > 1<<20 {
				t.Errorf("reading %s of %d bytes allocated %d KiB", tc.name, tc.limit+1, n>>10)
			}
		})
	}
}

// TestWritersRefuseWhatReadersWould: an object its readers would refuse is not
// written.
func TestWritersRefuseWhatReadersWould(t *testing.T) {
	if err := checkObjectSize("manifest b1", make([]byte, 10), 9); err == nil || !strings.Contains(err.Error(), "more than the 9 a reader accepts") {
		t.Errorf("checkObjectSize of 10 bytes against 9: %v", err)
	}
	if err := checkObjectSize("manifest b1", make([]byte, 9), 9); err != nil {
		t.Errorf("checkObjectSize of 9 bytes against 9: %v", err)
	}
}

// TestHostileSettingsAreRefused: numbers in a repository's objects that would
// make a reader allocate, wait or delete what it should not are corrupt or
// unsupported, at once: a manifest's chunk size (every reader of a position
// allocates one), the KDF's work factor (the derivation cannot be interrupted)
// and the grace period (one that overflowed into a millisecond would let a
// prune delete the pins of running backups).
func TestHostileSettingsAreRefused(t *testing.T) {
	ctx := context.Background()
	store, err := file.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	repo, err := Init(ctx, store, InitOptions{Key: []byte("secret key material"), ChunkSize: 4 << 20, Compression: "zstd"})
	if err != nil {
		t.Fatal(err)
	}
	put := func(name string, data []byte) {
		t.Helper()
		if err := store.Put(ctx, name, data); err != nil {
			t.Fatal(err)
		}
	}

	for _, cs := range []int64{1 << 40, 3 << 20, 1 << 10} {
		m := fmt.Sprintf(`{"version":1,"id":"b1","disk":"d","kind":"full","size":%d,"chunk_size":%d,"chunks":[""]}`, cs, cs)
		put(manifestName("b1"), repo.codec.Seal(nil, []byte(m), manifestAAD("b1"), true))
		if _, err := repo.Manifest(ctx, "b1"); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "not a power of two") {
			t.Errorf("manifest with chunk_size %d: %v; want corrupt, not a power of two", cs, err)
		}
	}

	for _, grace := range []int64{1<<58 + 1, 1<<58 - 1, -1, 0, 999} {
		put(gcSettingsName, fmt.Appendf(nil, `{"grace_ms":%d}`, grace))
		if d, err := repo.Grace(ctx); !errors.Is(err, ErrCorrupt) {
			t.Errorf("grace_ms %d: %v, %v; want corrupt", grace, d, err)
		}
	}
	if err := repo.SetGrace(ctx, 20*365*24*time.Hour); err == nil {
		t.Error("SetGrace of 20 years succeeded")
	}

	cfg, err := store.Get(ctx, configName, MaxSmallObject)
	if err != nil {
		t.Fatal(err)
	}
	hostile := regexp.MustCompile(`"iterations": *300000`).ReplaceAll(cfg, []byte(`"iterations":1099511627776`))
	if bytes.Equal(hostile, cfg) {
		t.Fatalf("no iterations field in the config: %s", cfg)
	}
	put(configName, hostile)
	start := time.Now()
	if _, err := Open(ctx, store, []byte("secret key material")); !errors.Is(err, ErrUnsupportedFormat) || !strings.Contains(err.Error(), "1099511627776 iterations") {
		t.Errorf("config asking for 2^40 KDF iterations: %v; want unsupported format", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("refusing the config took %v", took)
	}
}
