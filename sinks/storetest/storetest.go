// Package storetest checks that a sinks.Store keeps the Store contract, the way
// testing/fstest checks a file system: every store implementation runs it against
// a real backend.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/blockferry/blockferry/sinks"
)

// Run checks s, which must be empty: round trips of small, empty and 4 MB objects,
// replacing, deleting, conditional puts and listing by prefix.
func Run(t *testing.T, s sinks.Store) {
	t.Helper()
	ctx := context.Background()
	if _, err := s.Get(ctx, "config"); !errors.Is(err, sinks.ErrNotFound) {
		t.Fatalf("Get of a missing object: %v, want ErrNotFound", err)
	}
	objects := map[string][]byte{
		"config":             []byte("cfg"),
		"chunks/ab/abcdef01": bytes.Repeat([]byte("0123456789"), 400_000),
		"chunks/cd/cdef0123": []byte("chunk"),
		"empty":              {},
	}
	for name, data := range objects {
		if err := s.Put(ctx, name, data); err != nil {
			t.Fatalf("Put %s: %v", name, err)
		}
		got, err := s.Get(ctx, name)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("Get %s: %d bytes, %v; want %d bytes", name, len(got), err, len(data))
		}
		if ok, err := s.Exists(ctx, name); err != nil || !ok {
			t.Fatalf("Exists %s = %v, %v", name, ok, err)
		}
	}

	var listed []string
	if err := s.List(ctx, "chunks/", func(name string) error { listed = append(listed, name); return nil }); err != nil {
		t.Fatalf("List: %v", err)
	}
	slices.Sort(listed)
	if want := []string{"chunks/ab/abcdef01", "chunks/cd/cdef0123"}; !slices.Equal(listed, want) {
		t.Fatalf("List chunks/: %v, want %v", listed, want)
	}

	if err := s.Put(ctx, "config", []byte("cfg2")); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Get(ctx, "config"); string(got) != "cfg2" {
		t.Fatalf("after a replacing Put: %q", got)
	}

	if err := s.PutIfAbsent(ctx, "backups/b1", []byte("first")); err != nil {
		t.Fatalf("PutIfAbsent of a new object: %v", err)
	}
	if err := s.PutIfAbsent(ctx, "backups/b1", []byte("second")); !errors.Is(err, sinks.ErrExists) {
		t.Fatalf("second PutIfAbsent: %v, want ErrExists", err)
	}
	if got, _ := s.Get(ctx, "backups/b1"); string(got) != "first" {
		t.Fatalf("a refused PutIfAbsent changed the object to %q", got)
	}

	if err := s.Delete(ctx, "config"); err != nil {
		t.Fatal(err)
	}
	if ok, err := s.Exists(ctx, "config"); err != nil || ok {
		t.Fatalf("Exists after Delete = %v, %v", ok, err)
	}
	if err := s.Delete(ctx, "config"); err != nil {
		t.Fatalf("Delete of a missing object: %v", err)
	}
}
