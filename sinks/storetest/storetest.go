// Package storetest checks that a sinks.Store keeps the Store contract, the way
// testing/fstest checks a file system: every store implementation runs it against
// a real backend.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/blockferry/blockferry/sinks"
)

// anySize is a read limit no object of the checks reaches.
const anySize = 1 << 30

// Run checks s, which must be empty: round trips of small, empty and 4 MB objects,
// reads refused past their limit, replacing, deleting, conditional puts, listing
// by prefix with sizes and modification times, and batched deletes.
func Run(t *testing.T, s sinks.Store) {
	t.Helper()
	ctx := context.Background()
	if _, err := s.Get(ctx, "config", anySize); !errors.Is(err, sinks.ErrNotFound) {
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
		got, err := s.Get(ctx, name, anySize)
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

	checkListInfo(t, s, objects)
	checkGetInto(t, s, objects)
	checkLimit(t, s, "chunks/ab/abcdef01", objects["chunks/ab/abcdef01"])

	if err := s.Put(ctx, "config", []byte("cfg2")); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Get(ctx, "config", anySize); string(got) != "cfg2" {
		t.Fatalf("after a replacing Put: %q", got)
	}

	if err := s.PutIfAbsent(ctx, "backups/b1", []byte("first")); err != nil {
		t.Fatalf("PutIfAbsent of a new object: %v", err)
	}
	if err := s.PutIfAbsent(ctx, "backups/b1", []byte("second")); !errors.Is(err, sinks.ErrExists) {
		t.Fatalf("second PutIfAbsent: %v, want ErrExists", err)
	}
	if got, _ := s.Get(ctx, "backups/b1", anySize); string(got) != "first" {
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
	checkDeleteObjects(t, s)
}

// checkGetInto checks, for a store that is a sinks.BufferGetter, that
// GetInto returns what Get does, in the buffer's memory when it has room
// (after a bigger object was read into it, and after a smaller one), and a new
// slice when it has not; and ErrNotFound for a missing object.
func checkGetInto(t *testing.T, s sinks.Store, objects map[string][]byte) {
	t.Helper()
	bg, ok := s.(sinks.BufferGetter)
	if !ok {
		return
	}
	ctx := context.Background()
	if _, err := bg.GetInto(ctx, "missing", nil, anySize); !errors.Is(err, sinks.ErrNotFound) {
		t.Fatalf("GetInto of a missing object: %v, want ErrNotFound", err)
	}
	buf := make([]byte, 0, 8<<20)
	for _, name := range []string{"chunks/ab/abcdef01", "chunks/cd/cdef0123", "empty", "config"} {
		got, err := bg.GetInto(ctx, name, buf, anySize)
		if err != nil || !bytes.Equal(got, objects[name]) {
			t.Fatalf("GetInto %s: %d bytes, %v; want %d bytes", name, len(got), err, len(objects[name]))
		}
		if len(got) > 0 && &got[:1][0] != &buf[:1][0] {
			t.Errorf("GetInto %s: read into new memory, not into the buffer of %d bytes", name, cap(buf))
		}
	}
	small := make([]byte, 0, 10)
	if got, err := bg.GetInto(ctx, "chunks/ab/abcdef01", small, anySize); err != nil || !bytes.Equal(got, objects["chunks/ab/abcdef01"]) {
		t.Fatalf("GetInto into a small buffer: %d bytes, %v", len(got), err)
	}
}

// checkLimit checks that an object of exactly the limit is read, and that one
// byte more is refused with ErrInvalidObject, by Get and GetInto alike.
func checkLimit(t *testing.T, s sinks.Store, name string, data []byte) {
	t.Helper()
	ctx := context.Background()
	n := int64(len(data))
	get := map[string]func(limit int64) ([]byte, error){
		"Get": func(limit int64) ([]byte, error) { return s.Get(ctx, name, limit) },
	}
	if bg, ok := s.(sinks.BufferGetter); ok {
		get["GetInto"] = func(limit int64) ([]byte, error) { return bg.GetInto(ctx, name, make([]byte, 0, 8<<20), limit) }
	}
	for op, f := range get {
		if got, err := f(n); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%s %s with a limit of its own size: %d bytes, %v", op, name, len(got), err)
		}
		if got, err := f(n - 1); !errors.Is(err, sinks.ErrInvalidObject) {
			t.Fatalf("%s %s of %d bytes with a limit of %d: %d bytes, %v; want ErrInvalidObject", op, name, n, n-1, len(got), err)
		}
	}
}

// checkListInfo checks that ListInfo reports every object with its size and a
// modification time near now (stores and test machines share a clock here), and
// that replacing an object moves its modification time forward.
func checkListInfo(t *testing.T, s sinks.Store, objects map[string][]byte) {
	t.Helper()
	ctx := context.Background()
	infos := map[string]sinks.ObjectInfo{}
	if err := s.ListInfo(ctx, "", func(o sinks.ObjectInfo) error { infos[o.Name] = o; return nil }); err != nil {
		t.Fatalf("ListInfo: %v", err)
	}
	if len(infos) != len(objects) {
		t.Fatalf("ListInfo found %d objects, want %d: %v", len(infos), len(objects), infos)
	}
	for name, data := range objects {
		o := infos[name]
		if o.Size != int64(len(data)) {
			t.Fatalf("ListInfo %s: size %d, want %d", name, o.Size, len(data))
		}
		if age := time.Since(o.ModTime); age < -time.Minute || age > time.Minute {
			t.Fatalf("ListInfo %s: modification time %v is not near now", name, o.ModTime)
		}
	}
	// Garbage collection relies on a rewrite getting a new modification time;
	// S3 keeps it to the second.
	before := infos["chunks/cd/cdef0123"].ModTime
	time.Sleep(1100 * time.Millisecond)
	if err := s.Put(ctx, "chunks/cd/cdef0123", []byte("chunk")); err != nil {
		t.Fatal(err)
	}
	err := s.ListInfo(ctx, "chunks/cd/", func(o sinks.ObjectInfo) error {
		if !o.ModTime.After(before) {
			t.Errorf("a rewritten object keeps its modification time %v", o.ModTime)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// checkDeleteObjects deletes a batch larger than one S3 request, with missing
// names among it.
func checkDeleteObjects(t *testing.T, s sinks.Store) {
	t.Helper()
	ctx := context.Background()
	var names []string
	for i := range 1003 {
		name := fmt.Sprintf("gc/x/%04d", i)
		names = append(names, name)
		if i%2 == 0 {
			if err := s.Put(ctx, name, []byte{byte(i)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := s.Put(ctx, "gc/keep", nil); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteObjects(ctx, names); err != nil {
		t.Fatalf("DeleteObjects: %v", err)
	}
	var left []string
	if err := s.List(ctx, "gc/", func(name string) error { left = append(left, name); return nil }); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(left, []string{"gc/keep"}) {
		t.Fatalf("after DeleteObjects: %d objects left under gc/ (%.3v), want only gc/keep", len(left), left)
	}
	if err := s.DeleteObjects(ctx, nil); err != nil {
		t.Fatalf("DeleteObjects of nothing: %v", err)
	}
}
