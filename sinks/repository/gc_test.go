package repository

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blockferry/blockferry/internal/testutil"
	"github.com/blockferry/blockferry/sinks"
	"github.com/blockferry/blockferry/sinks/file"
	"github.com/blockferry/blockferry/sinks/s3"
)

// testGrace is short so that the races are real; S3 keeps modification times to
// the second, and an attempt must commit within half of it, so it is a few
// seconds. Attempts begin once the list is due, right before the sweep.
const testGrace = 4 * time.Second

// onStores runs fn against a fresh file store and a fresh prefix of a versitygw
// bucket.
func onStores(t *testing.T, fn func(t *testing.T, store sinks.Store)) {
	t.Run("file", func(t *testing.T) {
		s, err := file.Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		fn(t, s)
	})
	t.Run("s3", func(t *testing.T) {
		endpoint, ak, sk := testutil.StartS3(t)
		testutil.CreateBucket(t, endpoint, ak, sk, "bkt")
		testutil.S3Env(t, ak, sk)
		u, _ := url.Parse("s3://bkt/" + strings.ReplaceAll(t.Name(), "/", "-") + "?endpoint=" + url.QueryEscape(endpoint))
		s, err := s3.Open(context.Background(), u)
		if err != nil {
			t.Fatal(err)
		}
		fn(t, s)
	})
}

func newGCRepo(t *testing.T, store sinks.Store) *Repository {
	t.Helper()
	r, err := Init(context.Background(), store, InitOptions{ChunkSize: MinChunkSize, Compression: "zstd"})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.SetGrace(context.Background(), testGrace); err != nil {
		t.Fatal(err)
	}
	return r
}

func put(t *testing.T, r *Repository, content string) string {
	t.Helper()
	res, err := r.PutChunk(context.Background(), []byte(content), false)
	if err != nil {
		t.Fatal(err)
	}
	return res.ID.String()
}

// commit writes a one-position manifest naming base, with a patch naming
// patch when it is not empty.
func commit(t *testing.T, r *Repository, id, base, patch string) error {
	t.Helper()
	m := &Manifest{ID: id, Disk: "vm1/vda", Kind: "full", Size: MinChunkSize, ChunkSize: MinChunkSize,
		Started: time.Now().UTC(), Chunks: []string{base}}
	if patch != "" {
		m.Patches = map[int][]Patch{0: {{Offset: 0, Length: 4, Chunk: patch}}}
	}
	return r.PutManifest(context.Background(), m)
}

func prune(t *testing.T, r *Repository) *PruneReport {
	t.Helper()
	rep, err := r.Prune(context.Background(), PruneOptions{})
	if err != nil {
		t.Fatalf("prune: %v", err)
	}
	return rep
}

func mustCheck(t *testing.T, r *Repository) {
	t.Helper()
	rep, err := r.Check(context.Background(), CheckOptions{ReadData: 1})
	if err != nil || !rep.OK {
		t.Fatalf("check: %+v, %v", rep, err)
	}
}

// afterGrace waits until lists written so far are due, with a margin for the
// store's clock resolution.
func afterGrace() { time.Sleep(testGrace + 1100*time.Millisecond) }

func TestPruneCollectsOnlyUnreferenced(t *testing.T) {
	onStores(t, func(t *testing.T, store sinks.Store) {
		r := newGCRepo(t, store)
		a, b, p := put(t, r, "only the forgotten backup"), put(t, r, "shared"), put(t, r, "patch only")
		for _, m := range [][3]string{{"b1", a, ""}, {"b2", b, p}, {"b3", b, ""}} {
			if err := commit(t, r, m[0], m[1], m[2]); err != nil {
				t.Fatal(err)
			}
		}
		if err := r.Forget(context.Background(), []string{"b1"}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(1100 * time.Millisecond) // the list is written after the chunks' second
		if rep := prune(t, r); rep.ChunksCondemned != 1 || rep.ChunksDeleted != 0 {
			t.Fatalf("first prune: %+v, want one chunk condemned and none deleted", rep)
		}
		afterGrace()
		rep := prune(t, r)
		if rep.ChunksDeleted != 1 || rep.ListsSwept != 1 || rep.BytesFreed == 0 {
			t.Fatalf("second prune: %+v, want one chunk deleted", rep)
		}
		if ok, _ := r.store.Exists(context.Background(), chunkName(mustID(a))); ok {
			t.Fatal("the forgotten backup's chunk is still stored")
		}
		mustCheck(t, r)
		if rep := prune(t, r); rep.ChunksDeleted != 0 || rep.ChunksCondemned != 0 {
			t.Fatalf("third prune: %+v, want nothing", rep)
		}
	})
}

// TestPruneSplitsCondemnedLists: a prune that condemns more chunks than one list
// holds writes several lists, and the next prune sweeps them all. One list for
// all could grow past what a reader accepts, and then nothing would ever be
// condemned again.
func TestPruneSplitsCondemnedLists(t *testing.T) {
	defer func(n int) { maxListIDs = n }(maxListIDs)
	maxListIDs = 2
	store, err := file.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	r := newGCRepo(t, store)
	ctx := context.Background()
	var ids []string
	for i := range 5 {
		id := fmt.Sprintf("b%d", i)
		if err := commit(t, r, id, put(t, r, fmt.Sprintf("chunk %d", i)), ""); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if err := r.Forget(ctx, ids); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond)
	if rep := prune(t, r); rep.ChunksCondemned != 5 {
		t.Fatalf("first prune: %+v, want 5 chunks condemned", rep)
	}
	lists := 0
	if err := r.store.List(ctx, condemnedPrefix, func(string) error { lists++; return nil }); err != nil {
		t.Fatal(err)
	}
	if lists != 3 {
		t.Errorf("5 chunks condemned in %d lists, want 3 of at most 2", lists)
	}
	afterGrace()
	if rep := prune(t, r); rep.ChunksDeleted != 5 || rep.ListsSwept != 3 {
		t.Fatalf("second prune: %+v, want 5 chunks deleted from 3 lists", rep)
	}
	mustCheck(t, r)
}

func mustID(h string) ChunkID { id, _ := ParseChunkID(h); return id }

// condemned makes a chunk that a due list condemns: stored, named by no manifest.
func condemned(t *testing.T, r *Repository, content string) string {
	t.Helper()
	c := put(t, r, content)
	time.Sleep(1100 * time.Millisecond)
	if rep := prune(t, r); rep.ChunksCondemned == 0 {
		t.Fatalf("prune condemned nothing: %+v", rep)
	}
	return c
}

// TestAttemptReuploadsCondemned: a backup that began after the mark and needs a
// condemned chunk uploads it again, and the sweep keeps it.
func TestAttemptReuploadsCondemned(t *testing.T) {
	onStores(t, func(t *testing.T, store sinks.Store) {
		r := newGCRepo(t, store)
		c := condemned(t, r, "needed again")
		afterGrace()
		attempt, gc, err := r.BeginAttempt(context.Background(), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer gc.End(context.Background())
		res, err := attempt.PutChunk(context.Background(), []byte("needed again"), false)
		if err != nil || res.Stored == 0 {
			t.Fatalf("put of a condemned chunk: %+v, %v; want it uploaded", res, err)
		}
		if rep := prune(t, r); rep.ChunksDeleted != 0 || rep.ListsSwept != 1 {
			t.Fatalf("sweep: %+v, want the re-uploaded chunk kept", rep)
		}
		if err := commit(t, attempt, "b1", c, ""); err != nil {
			t.Fatal(err)
		}
		mustCheck(t, r)
	})
}

// blockingStore holds the first DeleteObjects of chunks until release is closed.
type blockingStore struct {
	sinks.Store
	reached chan struct{}
	release chan struct{}
	once    sync.Once
}

func (s *blockingStore) DeleteObjects(ctx context.Context, names []string) error {
	if len(names) > 0 && strings.HasPrefix(names[0], chunksPrefix) {
		s.once.Do(func() { close(s.reached); <-s.release })
	}
	return s.Store.DeleteObjects(ctx, names)
}

// TestSweepRacesReupload: the sweep read the chunk's old modification time before
// the attempt uploaded it again and deletes it after. The attempt must notice,
// whether it checks while the sweep runs (it waits) or after it ended.
func TestSweepRacesReupload(t *testing.T) {
	for _, during := range []bool{true, false} {
		t.Run(fmt.Sprintf("check-during-sweep=%v", during), func(t *testing.T) {
			onStores(t, func(t *testing.T, store sinks.Store) {
				r := newGCRepo(t, store)
				condemned(t, r, "raced")
				afterGrace()
				attempt, gc, err := r.BeginAttempt(context.Background(), nil)
				if err != nil {
					t.Fatal(err)
				}
				defer gc.End(context.Background())
				bs := &blockingStore{Store: store, reached: make(chan struct{}), release: make(chan struct{})}
				pruner := *r
				pruner.store = bs
				done := make(chan error, 1)
				go func() { _, err := pruner.Prune(context.Background(), PruneOptions{}); done <- err }()
				<-bs.reached // marker written, chunk listed with its old time, delete pending
				res, err := attempt.PutChunk(context.Background(), []byte("raced"), false)
				if err != nil || res.Stored == 0 {
					t.Fatalf("re-upload: %+v, %v", res, err)
				}
				if !during {
					close(bs.release)
					if err := <-done; err != nil {
						t.Fatal(err)
					}
				} else {
					time.AfterFunc(500*time.Millisecond, func() { close(bs.release) })
				}
				err = commit(t, attempt, "b1", res.ID.String(), "")
				if !errors.Is(err, ErrCollected) {
					t.Fatalf("commit after the chunk was swept: %v, want ErrCollected", err)
				}
				if during {
					if err := <-done; err != nil {
						t.Fatal(err)
					}
				}
				// The retry uploads it again (the list is gone) and commits.
				retry, gc2, err := r.BeginAttempt(context.Background(), nil)
				if err != nil {
					t.Fatal(err)
				}
				defer gc2.End(context.Background())
				if res, err := retry.PutChunk(context.Background(), []byte("raced"), false); err != nil || res.Stored == 0 {
					t.Fatalf("retry's put: %+v, %v; want an upload", res, err)
				}
				if err := commit(t, retry, "b1", res.ID.String(), ""); err != nil {
					t.Fatal(err)
				}
				mustCheck(t, r)
			})
		})
	}
}

// TestPinKeepsParentChunks is the gap of the lead's sketch: an incremental
// reuses its parent's condemned chunk without uploading it, and the parent is
// forgotten while it runs. The pin keeps the chunk.
func TestPinKeepsParentChunks(t *testing.T) {
	onStores(t, func(t *testing.T, store sinks.Store) {
		r := newGCRepo(t, store)
		c := condemned(t, r, "parent's")
		// The parent committed after the mark (it deduplicated c before it).
		if err := commit(t, r, "parent", c, ""); err != nil {
			t.Fatal(err)
		}
		parent, err := r.Manifest(context.Background(), "parent")
		if err != nil {
			t.Fatal(err)
		}
		afterGrace()
		attempt, gc, err := r.BeginAttempt(context.Background(), parent)
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Forget(context.Background(), []string{"parent"}); err != nil {
			t.Fatal(err)
		}
		if rep := prune(t, r); rep.ChunksDeleted != 0 {
			t.Fatalf("sweep deleted a pinned chunk: %+v", rep)
		}
		if err := commit(t, attempt, "child", c, ""); err != nil {
			t.Fatal(err)
		}
		gc.End(context.Background())
		mustCheck(t, r)
	})
}

// failingStore fails every DeleteObjects of chunks, like a prune killed mid-sweep.
type failingStore struct{ sinks.Store }

func (s failingStore) DeleteObjects(ctx context.Context, names []string) error {
	if len(names) > 0 && strings.HasPrefix(names[0], chunksPrefix) {
		return errors.New("killed")
	}
	return s.Store.DeleteObjects(ctx, names)
}

// TestPruneResumesAfterCrash: a prune that dies between mark and sweep leaves a
// repository that check passes, and the next prune finishes the work.
func TestPruneResumesAfterCrash(t *testing.T) {
	onStores(t, func(t *testing.T, store sinks.Store) {
		r := newGCRepo(t, store)
		keep := put(t, r, "kept")
		if err := commit(t, r, "b1", keep, ""); err != nil {
			t.Fatal(err)
		}
		condemned(t, r, "garbage")
		afterGrace()
		crashed := *r
		crashed.store = failingStore{store}
		if _, err := crashed.Prune(context.Background(), PruneOptions{}); err == nil {
			t.Fatal("the crashing prune succeeded")
		}
		mustCheck(t, r)
		fresh, err := Open(context.Background(), store, nil)
		if err != nil {
			t.Fatal(err)
		}
		if rep := prune(t, fresh); rep.ChunksDeleted != 1 {
			t.Fatalf("prune after the crash: %+v, want the garbage deleted", rep)
		}
		mustCheck(t, fresh)
		if ok, _ := fresh.store.Exists(context.Background(), chunkName(mustID(keep))); !ok {
			t.Fatal("a kept chunk is missing")
		}
	})
}

func TestListBackupsSkipsBadObjects(t *testing.T) {
	onStores(t, func(t *testing.T, store sinks.Store) {
		r := newGCRepo(t, store)
		c := put(t, r, "x")
		for _, id := range []string{"good1", "good2"} {
			if err := commit(t, r, id, c, ""); err != nil {
				t.Fatal(err)
			}
		}
		ctx := context.Background()
		if err := store.Put(ctx, "backups/corrupt", []byte{1, 0, '{'}); err != nil {
			t.Fatal(err)
		}
		if err := store.Put(ctx, "backups/stray/x", []byte("foreign")); err != nil {
			t.Fatal(err)
		}
		list, bad, err := r.ListBackups(ctx, "")
		if err != nil {
			t.Fatal(err)
		}
		if len(list) != 2 || len(bad) != 2 || bad[0].Name != "backups/corrupt" || bad[1].Name != "backups/stray/x" {
			t.Fatalf("listed %d backups, bad %+v; want 2 and the corrupt and stray objects", len(list), bad)
		}
		if rep, err := r.Check(ctx, CheckOptions{}); err != nil || rep.OK || len(rep.BadManifests) != 2 {
			t.Fatalf("check: %+v, %v; want the two bad objects reported", rep, err)
		}
	})
}
