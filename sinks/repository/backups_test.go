package repository

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/blockferry/blockferry/sinks"
	"github.com/blockferry/blockferry/sinks/file"
)

// newFileRepository is a new unencrypted repository in a temporary directory.
func newFileRepository(t *testing.T) (*Repository, sinks.Store) {
	t.Helper()
	store, err := file.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	repo, err := Init(context.Background(), store, InitOptions{ChunkSize: 4 << 20, Compression: "zstd"})
	if err != nil {
		t.Fatal(err)
	}
	return repo, store
}

// TestBackupsIgnoreUnknownNames: only objects directly under backups/ with a valid
// backup id are manifests (docs/FORMAT.md); a listing skips every other name there,
// even one that ends in the id of a stored backup.
func TestBackupsIgnoreUnknownNames(t *testing.T) {
	ctx := context.Background()
	repo, store := newFileRepository(t)
	m := &Manifest{ID: "01B", Disk: "vm1/vda", Kind: "full", Started: time.Now(), Size: 0, ChunkSize: 4 << 20}
	if err := repo.PutManifest(ctx, m); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"backups/old/01B", "backups/old/01C", "backups/notes~", "backups/-x"} {
		if err := store.Put(ctx, name, []byte("not a manifest")); err != nil {
			t.Fatal(err)
		}
	}
	list, _, err := repo.ListBackups(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, b := range list {
		ids = append(ids, b.ID)
	}
	if !slices.Equal(ids, []string{"01B"}) {
		t.Fatalf("backups %v, want [01B]", ids)
	}
}
