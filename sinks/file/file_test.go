package file

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/blockferry/blockferry/sinks"
	"github.com/blockferry/blockferry/sinks/storetest"
)

func newStore(t *testing.T) (*Store, string) {
	t.Helper()
	// A directory that does not exist yet: the first Put must create it.
	dir := filepath.Join(t.TempDir(), "repo")
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	return s, dir
}

func TestRoundTrip(t *testing.T) {
	ctx := context.Background()
	s, dir := newStore(t)

	if _, err := s.Get(ctx, "config", 1<<30); !errors.Is(err, sinks.ErrNotFound) {
		t.Fatalf("Get before any Put: err = %v, want ErrNotFound", err)
	}
	if err := s.List(ctx, "", func(string) error { return errors.New("called") }); err != nil {
		t.Fatalf("List of missing dir: %v", err)
	}

	storetest.Run(t, s)
	if _, err := os.Stat(filepath.Join(dir, "chunks", "ab", "abcdef01")); err != nil {
		t.Fatalf("object not at its path: %v", err)
	}
	if err := s.Delete(ctx, "nodir/x"); err != nil {
		t.Fatalf("Delete in missing directory: %v", err)
	}
	// "config/x" below a file is simply missing.
	if err := s.Put(ctx, "file", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, "file/x", 1<<30); !errors.Is(err, sinks.ErrNotFound) {
		t.Fatalf("Get below a file: %v", err)
	}
	if ok, err := s.Exists(ctx, "chunks"); err != nil || ok {
		t.Fatalf("Exists of a directory = %v, %v", ok, err)
	}
}

func TestInvalidNames(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore(t)
	for _, name := range []string{"", "/abs", "../escape", "a/../b", "a//b", "a/", ".", ".tmp-x", "a/.tmp-b"} {
		if err := s.Put(ctx, name, []byte("x")); err == nil {
			t.Errorf("Put %q succeeded", name)
		}
		if _, err := s.Get(ctx, name, 1<<30); err == nil || errors.Is(err, sinks.ErrNotFound) {
			t.Errorf("Get %q: err = %v, want an invalid-name error", name, err)
		}
	}
}

func TestPutIfAbsent(t *testing.T) {
	ctx := context.Background()
	s, dir := newStore(t)
	if err := s.PutIfAbsent(ctx, "manifests/m1", []byte("first")); err != nil {
		t.Fatal(err)
	}
	err := s.PutIfAbsent(ctx, "manifests/m1", []byte("second"))
	if !errors.Is(err, sinks.ErrExists) {
		t.Fatalf("second PutIfAbsent: err = %v, want ErrExists", err)
	}
	if got, _ := s.Get(ctx, "manifests/m1", 1<<30); string(got) != "first" {
		t.Fatalf("object changed to %q", got)
	}
	assertNoTemp(t, dir)
}

// Many writers race for one name: exactly one PutIfAbsent wins, and every Put of
// the same name leaves one complete object, never a mix or a partial file.
func TestConcurrentWriters(t *testing.T) {
	ctx := context.Background()
	s, dir := newStore(t)
	const writers = 16
	payload := func(i int) []byte { return bytes.Repeat([]byte{byte('a' + i)}, 64<<10) }

	var wg sync.WaitGroup
	errs := make([]error, writers)
	for i := range writers {
		wg.Go(func() { errs[i] = s.PutIfAbsent(ctx, "config", payload(i)) })
	}
	wg.Wait()
	winner := -1
	for i, err := range errs {
		switch {
		case err == nil:
			if winner >= 0 {
				t.Fatalf("writers %d and %d both won PutIfAbsent", winner, i)
			}
			winner = i
		case !errors.Is(err, sinks.ErrExists):
			t.Fatalf("writer %d: %v", i, err)
		}
	}
	if winner < 0 {
		t.Fatal("no PutIfAbsent won")
	}
	if got, _ := s.Get(ctx, "config", 1<<30); !bytes.Equal(got, payload(winner)) {
		t.Fatal("config does not hold the winner's data")
	}

	for i := range writers {
		wg.Go(func() {
			if err := s.Put(ctx, "chunks/00/same", payload(i)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	got, err := s.Get(ctx, "chunks/00/same", 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 64<<10 || got[0] < 'a' || got[0] >= 'a'+writers || !bytes.Equal(got, payload(int(got[0]-'a'))) {
		t.Fatalf("concurrent Puts left a mixed or partial object (%d bytes)", len(got))
	}
	assertNoTemp(t, dir)
}

func TestList(t *testing.T) {
	ctx := context.Background()
	s, dir := newStore(t)
	names := []string{"config", "chunks/ab/ab01", "chunks/ab/ab02", "chunks/ac/ac01", "chunksx", "manifests/vm1/2024"}
	for _, n := range names {
		if err := s.Put(ctx, n, []byte(n)); err != nil {
			t.Fatal(err)
		}
	}
	// A temp file left by a crash must not be listed.
	if err := os.WriteFile(filepath.Join(dir, "chunks", "ab", tempPrefix+"ab03-123"), nil, 0o600); err != nil {
		t.Fatal(err)
	}

	for prefix, want := range map[string][]string{
		"":              names,
		"chunks":        {"chunks/ab/ab01", "chunks/ab/ab02", "chunks/ac/ac01", "chunksx"},
		"chunks/":       {"chunks/ab/ab01", "chunks/ab/ab02", "chunks/ac/ac01"},
		"chunks/a":      {"chunks/ab/ab01", "chunks/ab/ab02", "chunks/ac/ac01"},
		"chunks/ab/":    {"chunks/ab/ab01", "chunks/ab/ab02"},
		"chunks/ab/ab0": {"chunks/ab/ab01", "chunks/ab/ab02"},
		"manifests/":    {"manifests/vm1/2024"},
		"nothing/":      nil,
		"../":           nil,
	} {
		var got []string
		if err := s.List(ctx, prefix, func(n string) error { got = append(got, n); return nil }); err != nil {
			t.Fatalf("List %q: %v", prefix, err)
		}
		slices.Sort(got)
		want = slices.Sorted(slices.Values(want))
		if !slices.Equal(got, want) {
			t.Errorf("List %q = %v, want %v", prefix, got, want)
		}
	}

	stop := errors.New("stop")
	calls := 0
	err := s.List(ctx, "", func(string) error { calls++; return stop })
	if !errors.Is(err, stop) || calls != 1 {
		t.Fatalf("List with failing fn: err = %v after %d calls", err, calls)
	}
}

func TestOpenURL(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		uri  string
		want string // directory, "" for an error
	}{
		{"file://" + dir, dir},
		{"file://localhost" + dir, dir},
		{"file://" + dir + "/with%20space", dir + "/with space"},
		{"file://otherhost/srv", ""},
		{"file://" + dir + "?x=1", ""},
		{"s3://bucket", ""},
	} {
		u, err := url.Parse(tc.uri)
		if err != nil {
			t.Fatal(err)
		}
		s, err := OpenURL(context.Background(), u)
		if tc.want == "" {
			if err == nil {
				t.Errorf("OpenURL(%s) succeeded", tc.uri)
			}
			continue
		}
		if err != nil {
			t.Errorf("OpenURL(%s): %v", tc.uri, err)
			continue
		}
		if s.dir != tc.want || s.Location() != "file://"+tc.want {
			t.Errorf("OpenURL(%s): dir %q location %q", tc.uri, s.dir, s.Location())
		}
	}

	f := filepath.Join(dir, "plainfile")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(f); err == nil {
		t.Error("Open of a regular file succeeded")
	}
}

func assertNoTemp(t *testing.T, dir string) {
	t.Helper()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if strings.HasPrefix(d.Name(), tempPrefix) {
			return fmt.Errorf("temporary file left behind: %s", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestDirectWrites: objects of every size around the direct I/O block, from
// aligned buffers with room to pad and from unaligned ones without, come back
// exactly, also where the file system refuses direct I/O (played by making the
// switch to O_DIRECT fail as Linux does there, with EINVAL), and no temporary file
// is left behind.
func TestDirectWrites(t *testing.T) {
	for _, refused := range []bool{false, true} {
		if refused {
			orig := enableDirect
			enableDirect = func(*os.File) error { return syscall.EINVAL }
			t.Cleanup(func() { enableDirect = orig })
		}
		directWrites(t, t.TempDir())
	}
}

func directWrites(t *testing.T, dir string) {
	ctx := context.Background()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{0, 1, 4095, 4096, 4097, 1<<20 + 3} {
		aligned := alignedSlice((n + 2*directAlign) &^ (directAlign - 1))
		for name, data := range map[string][]byte{"aligned": aligned[:n], "unaligned": slices.Clip(aligned[1 : n+1])} {
			for i := range data {
				data[i] = byte(i*7 + n)
			}
			obj := fmt.Sprintf("o/%s-%d", name, n)
			if err := s.Put(ctx, obj, data); err != nil {
				t.Fatalf("%s: put %s: %v", dir, obj, err)
			}
			got, err := s.Get(ctx, obj, 1<<30)
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("%s: %s: got %d bytes (%v), want %d", dir, obj, len(got), err, n)
			}
		}
	}
	assertNoTemp(t, dir)
}

// TestGetRefusesWhatPutNeverMakes: what is planted in a repository directory
// where an object should be is refused before it is read, with ErrInvalidObject:
// a file larger than the reader's limit (sparse, 1 TiB: reading it would take the
// process down), a symbolic link (it could point anywhere), a named pipe (opening
// it would wait for a writer forever) and a directory.
func TestGetRefusesWhatPutNeverMakes(t *testing.T) {
	ctx := context.Background()
	s, dir := newStore(t)
	if err := s.Put(ctx, "chunks/aa/outside", []byte("secret")); err != nil {
		t.Fatal(err)
	}
	plant := map[string]func(p string) error{
		"chunks/aa/huge": func(p string) error {
			f, err := os.Create(p)
			if err == nil {
				err = errors.Join(f.Truncate(1<<40), f.Close())
			}
			return err
		},
		"chunks/aa/link": func(p string) error { return os.Symlink(filepath.Join(dir, "chunks/aa/outside"), p) },
		"chunks/aa/fifo": func(p string) error { return syscall.Mkfifo(p, 0o600) },
		"chunks/aa/dir":  func(p string) error { return os.Mkdir(p, 0o700) },
	}
	for name, create := range plant {
		if err := create(filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
		if got, err := s.Get(ctx, name, 64<<20); !errors.Is(err, sinks.ErrInvalidObject) {
			t.Errorf("Get %s: %d bytes, %v; want ErrInvalidObject", name, len(got), err)
		}
		if got, err := s.GetInto(ctx, name, make([]byte, 0, 1<<20), 64<<20); !errors.Is(err, sinks.ErrInvalidObject) {
			t.Errorf("GetInto %s: %d bytes, %v; want ErrInvalidObject", name, len(got), err)
		}
	}
}
