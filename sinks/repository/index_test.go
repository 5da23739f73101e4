package repository

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/blockferry/blockferry/sinks"
)

// countingStore counts the objects read under backups/ and index/.
type countingStore struct {
	sinks.Store
	manifests, entries atomic.Int64
}

func (s *countingStore) Get(ctx context.Context, name string, limit int64) ([]byte, error) {
	switch {
	case strings.HasPrefix(name, backupsPrefix):
		s.manifests.Add(1)
	case strings.HasPrefix(name, indexPrefix):
		s.entries.Add(1)
	}
	return s.Store.Get(ctx, name, limit)
}

func commitDisk(t *testing.T, r *Repository, id, disk, chunk string) {
	t.Helper()
	m := &Manifest{ID: id, Disk: disk, Kind: "full", Size: MinChunkSize, ChunkSize: MinChunkSize, Chunks: []string{chunk}}
	if err := r.PutManifest(context.Background(), m); err != nil {
		t.Fatal(err)
	}
}

func listedIDs(t *testing.T, r *Repository, disk string) (ids []string, bad []BadObject) {
	t.Helper()
	list, bad, err := r.ListBackups(context.Background(), disk)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range list {
		if m.Chunks != nil {
			t.Errorf("%s listed with its chunk index", m.ID)
		}
		ids = append(ids, m.ID)
	}
	return ids, bad
}

// TestListingReadsTheIndex: listing a disk reads the index entries of that
// disk's backups and no manifest; a manifest without an entry (an older
// blockferry's) is read and listed, an entry without a manifest is ignored and
// collected by a prune after the grace period, a corrupt entry falls back to
// its manifest, and forgetting a backup deletes its entry.
func TestListingReadsTheIndex(t *testing.T) {
	onStores(t, func(t *testing.T, store sinks.Store) {
		ctx := context.Background()
		cs := &countingStore{Store: store}
		r := newGCRepo(t, cs)
		c := put(t, r, "data")
		for i, id := range []string{"a1", "a2", "a3", "b1", "b2"} {
			commitDisk(t, r, id, map[bool]string{true: "vm1/vda", false: "vm2/vdb"}[i < 3], c)
		}
		ids, bad := listedIDs(t, r, "vm1/vda")
		if strings.Join(ids, ",") != "a1,a2,a3" || len(bad) != 0 {
			t.Fatalf("vm1/vda: %v, bad %v", ids, bad)
		}
		if m, e := cs.manifests.Load(), cs.entries.Load(); m != 0 || e != 3 {
			t.Fatalf("listing vm1/vda read %d manifests and %d index entries; want 0 and 3", m, e)
		}

		// b1 as an older blockferry wrote it: no entry. a1's entry is corrupt.
		if err := store.Delete(ctx, r.indexName("vm2/vdb", "b1")); err != nil {
			t.Fatal(err)
		}
		if err := store.Put(ctx, r.indexName("vm1/vda", "a1"), []byte("garbage")); err != nil {
			t.Fatal(err)
		}
		// An entry whose manifest is gone: a backup forgotten by an older blockferry.
		commitDisk(t, r, "a4", "vm1/vda", c)
		if err := store.Delete(ctx, manifestName("a4")); err != nil {
			t.Fatal(err)
		}
		cs.manifests.Store(0)
		if ids, _ := listedIDs(t, r, "vm2/vdb"); strings.Join(ids, ",") != "b1,b2" {
			t.Errorf("vm2/vdb without b1's entry: %v", ids)
		}
		if ids, _ := listedIDs(t, r, "vm1/vda"); strings.Join(ids, ",") != "a1,a2,a3" {
			t.Errorf("vm1/vda with a corrupt entry and an orphan one: %v", ids)
		}
		if n := cs.manifests.Load(); n != 3 {
			t.Errorf("%d manifests read; want b1's (twice: it has no entry to tell its disk) and a1's", n)
		}
		if ids, _ := listedIDs(t, r, ""); len(ids) != 5 {
			t.Errorf("all disks: %v", ids)
		}

		if err := r.Forget(ctx, []string{"a2"}); err != nil {
			t.Fatal(err)
		}
		if ok, _ := store.Exists(ctx, r.indexName("vm1/vda", "a2")); ok {
			t.Error("forget left the index entry")
		}
		if rep := prune(t, r); rep.IndexEntriesDeleted != 0 {
			t.Errorf("prune collected %d index entries younger than the grace period", rep.IndexEntriesDeleted)
		}
		afterGrace()
		if rep := prune(t, r); rep.IndexEntriesDeleted != 1 {
			t.Errorf("prune after the grace period collected %d index entries, want a4's", rep.IndexEntriesDeleted)
		}
		if ok, _ := store.Exists(ctx, r.indexName("vm1/vda", "a4")); ok {
			t.Error("the orphan entry is still there")
		}
	})
}
