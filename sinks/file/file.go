// Package file is a sinks.Store kept in a local (or mounted) directory: each object
// is one file, its name a path below the directory.
//
// Writes are crash-safe: data goes to a temporary file in the destination directory,
// which is fsynced and then renamed (Put) or hard-linked (PutIfAbsent) into place, and
// the directory is fsynced so the new entry survives a power loss. A reader therefore
// sees either no object or a complete one, never a partial file.
package file

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/blockferry/blockferry/sinks"
)

// tempPrefix starts the names of files being written. List skips them and valid
// object names may not use it, so a temporary file left by a crash is never taken
// for an object.
const tempPrefix = ".tmp-"

// dirMode is for the directories the store creates (less the umask). Objects are
// created 0600 by os.CreateTemp: backups hold whole disk contents.
const dirMode = 0o750

// Store is a sinks.Store rooted at a directory. It is safe for concurrent use,
// including by several processes sharing the directory.
type Store struct {
	dir string // absolute, cleaned
}

var _ sinks.Store = (*Store)(nil)

// Open returns the store rooted at dir. The directory need not exist: whether a
// repository is there is for the repository layer to decide, and the first Put
// creates it. Only a dir that exists but is not a directory is refused.
func Open(dir string) (*Store, error) {
	if dir == "" {
		return nil, fmt.Errorf("file store: %w: empty directory path", sinks.ErrInvalidLocation)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("file store %q: %w", dir, err)
	}
	if st, err := os.Stat(abs); err == nil && !st.IsDir() {
		return nil, fmt.Errorf("file://%s: %w: not a directory", abs, sinks.ErrInvalidLocation)
	}
	return &Store{dir: abs}, nil
}

// OpenURL opens a file:// URI such as file:///srv/bf (or file:relative/dir). It
// takes a context only to share its signature with the S3 store's Open, so both can
// sit in one scheme table; it does no I/O that could block.
func OpenURL(_ context.Context, u *url.URL) (*Store, error) {
	if u.Scheme != "file" {
		return nil, fmt.Errorf("file store: %w: scheme %q is not file", sinks.ErrInvalidLocation, u.Scheme)
	}
	if u.Host != "" && u.Host != "localhost" {
		return nil, fmt.Errorf("file store %s: %w: remote host %q is not supported", u.Redacted(), sinks.ErrInvalidLocation, u.Host)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("file store %s: %w: query and fragment are not supported", u.Redacted(), sinks.ErrInvalidLocation)
	}
	p := u.Path
	if u.Opaque != "" { // file:relative/dir
		var err error
		if p, err = url.PathUnescape(u.Opaque); err != nil {
			return nil, fmt.Errorf("file store %s: %w: %w", u.Redacted(), sinks.ErrInvalidLocation, err)
		}
	}
	return Open(p)
}

// Location returns the store's file:// URI.
func (s *Store) Location() string { return "file://" + filepath.ToSlash(s.dir) }

// path maps an object name to its file, refusing names that would escape the
// directory or collide with temporary files.
func (s *Store) path(name string) (string, error) {
	if err := validName(name); err != nil {
		return "", fmt.Errorf("%s: %w", s.Location(), err)
	}
	return filepath.Join(s.dir, filepath.FromSlash(name)), nil
}

func validName(name string) error {
	if name == "" {
		return errors.New("empty object name")
	}
	for _, c := range strings.Split(name, "/") {
		switch {
		case c == "" || c == "." || c == "..":
			return fmt.Errorf("invalid object name %q", name)
		case strings.HasPrefix(c, tempPrefix):
			return fmt.Errorf("invalid object name %q: %q is reserved for temporary files", name, tempPrefix)
		case strings.ContainsRune(c, '\\') || strings.ContainsRune(c, 0):
			return fmt.Errorf("invalid object name %q", name)
		}
	}
	return nil
}

// Put stores data under name, replacing any existing object atomically.
func (s *Store) Put(ctx context.Context, name string, data []byte) error {
	return s.put(ctx, name, data, replace)
}

// PutIfAbsent stores data under name unless an object is already there, in which
// case it returns an error wrapping sinks.ErrExists.
func (s *Store) PutIfAbsent(ctx context.Context, name string, data []byte) error {
	return s.put(ctx, name, data, linkNew)
}

// put writes data to a fsynced temporary file, moves it into place with publish,
// and fsyncs the directory, so that the object is either whole or absent.
func (s *Store) put(ctx context.Context, name string, data []byte, publish func(tmp, p string) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	p, err := s.path(name)
	if err != nil {
		return err
	}
	tmp, err := s.writeTemp(p, data)
	if err == nil {
		err = publish(tmp, p)
	}
	if err == nil {
		// One fsync covers the new name and the removed temporary one.
		err = syncDir(filepath.Dir(p))
	}
	if err != nil {
		return fmt.Errorf("%s: put %q: %w", s.Location(), name, err)
	}
	return nil
}

// replace renames tmp over p.
func replace(tmp, p string) error {
	if err := os.Rename(tmp, p); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return nil
}

// linkNew links tmp as p only if p does not exist: link(2) fails with EEXIST when
// it does, which makes the check and the write one atomic step, also between
// processes (rename(2) would silently replace). The temporary name goes away
// whatever happened.
func linkNew(tmp, p string) error {
	linkErr := os.Link(tmp, p)
	rmErr := os.Remove(tmp)
	switch {
	case errors.Is(linkErr, fs.ErrExist):
		return sinks.ErrExists
	case linkErr != nil:
		return linkErr
	case rmErr != nil:
		return fmt.Errorf("removing temporary file: %w", rmErr)
	}
	return nil
}

// writeTemp writes data to a new fsynced temporary file next to p (creating p's
// directory if needed) and returns its path.
func (s *Store) writeTemp(p string, data []byte) (string, error) {
	dir := filepath.Dir(p)
	if err := s.mkdirs(dir); err != nil {
		return "", err
	}
	f, direct, err := createTemp(dir, tempPrefix+filepath.Base(p)+"-")
	if err != nil {
		return "", err
	}
	tmp := f.Name()
	fail := func(err error) (string, error) {
		_ = f.Close()
		_ = os.Remove(tmp)
		return "", err
	}
	if direct {
		err = writeDirect(f, data)
	} else {
		_, err = f.Write(data)
	}
	if err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		_ = os.Remove(tmp)
		return "", err
	}
	return tmp, nil
}

// mkdirs creates dir and any missing parents up to and including the store root,
// fsyncing each parent after it gains an entry: a file fsynced into a directory
// that itself was never made durable could vanish in a crash.
func (s *Store) mkdirs(dir string) error {
	if st, err := os.Stat(dir); err == nil {
		if !st.IsDir() {
			return fmt.Errorf("%s is not a directory", dir)
		}
		return nil
	}
	parent := filepath.Dir(dir)
	if parent != dir {
		if err := s.mkdirs(parent); err != nil {
			return err
		}
	}
	switch err := os.Mkdir(dir, dirMode); {
	case err == nil:
		return syncDir(parent)
	case errors.Is(err, fs.ErrExist): // another writer made it; it fsyncs the parent
		return nil
	default:
		return err
	}
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("fsync directory %s: %w", dir, err)
	}
	return nil
}

// Get returns the object's contents, or an error wrapping sinks.ErrNotFound.
func (s *Store) Get(ctx context.Context, name string, limit int64) ([]byte, error) {
	return s.GetInto(ctx, name, nil, limit)
}

// GetInto is Get into buf's capacity when the object fits.
func (s *Store) GetInto(ctx context.Context, name string, buf []byte, limit int64) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p, err := s.path(name)
	if err != nil {
		return nil, err
	}
	data, err := readFileInto(p, buf, limit)
	if err != nil {
		if notFound(err) {
			return nil, fmt.Errorf("%s: get %q: %w", s.Location(), name, sinks.ErrNotFound)
		}
		return nil, fmt.Errorf("%s: get %q: %w", s.Location(), name, err)
	}
	return data, nil
}

// readFileInto reads file p whole, into buf when it fits. Objects are never
// written in place (put renames a complete file over the name), so the size
// fstat reports is the object's. What put never makes is refused before a byte
// is read: a file larger than limit, and anything but a regular file. The open
// neither follows a symbolic link in the object's own place (one planted there
// could point anywhere) nor waits for a named pipe's writer. The directories
// above it are followed: an operator may link chunks/ to another disk.
func readFileInto(p string, buf []byte, limit int64) ([]byte, error) {
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if errors.Is(err, syscall.ELOOP) {
		return nil, fmt.Errorf("%w: a symbolic link", sinks.ErrInvalidObject)
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	n := st.Size()
	switch {
	case !st.Mode().IsRegular():
		return nil, fmt.Errorf("%w: not a regular file (%s)", sinks.ErrInvalidObject, st.Mode().Type())
	case n > limit:
		return nil, fmt.Errorf("%w: %d bytes, more than the %d its reader allows", sinks.ErrInvalidObject, n, limit)
	}
	if int64(cap(buf)) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(f, buf); err != nil {
		return nil, err
	}
	return buf, nil
}

// Exists reports whether an object is stored under name.
func (s *Store) Exists(ctx context.Context, name string) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	p, err := s.path(name)
	if err != nil {
		return false, err
	}
	st, err := os.Stat(p)
	switch {
	case err == nil:
		return st.Mode().IsRegular(), nil
	case notFound(err):
		return false, nil
	default:
		return false, fmt.Errorf("%s: stat %q: %w", s.Location(), name, err)
	}
}

// notFound also counts ENOTDIR: "a/b" is missing when "a" is a file.
func notFound(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)
}

// List calls fn for every object whose name starts with prefix. Only the part of
// the tree that can match is walked, so listing "chunks/ab" reads chunks/ only.
func (s *Store) List(ctx context.Context, prefix string, fn func(name string) error) error {
	return s.walk(ctx, prefix, func(name string, _ fs.DirEntry) error { return fn(name) })
}

// ListInfo is List with each object's size and modification time.
func (s *Store) ListInfo(ctx context.Context, prefix string, fn func(sinks.ObjectInfo) error) error {
	return s.walk(ctx, prefix, func(name string, d fs.DirEntry) error {
		info, err := d.Info()
		if notFound(err) {
			return nil // removed while we walked
		}
		if err != nil {
			return err
		}
		return fn(sinks.ObjectInfo{Name: name, Size: info.Size(), ModTime: info.ModTime()})
	})
}

// walk calls fn for every regular file whose object name starts with prefix.
func (s *Store) walk(ctx context.Context, prefix string, fn func(name string, d fs.DirEntry) error) error {
	// Start at the deepest directory the prefix names completely.
	start := s.dir
	if i := strings.LastIndexByte(prefix, '/'); i >= 0 {
		if validName(prefix[:i]) != nil {
			return nil // no valid object name starts with this prefix
		}
		start = filepath.Join(s.dir, filepath.FromSlash(prefix[:i]))
	}
	err := filepath.WalkDir(start, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == start && notFound(err) {
				return fs.SkipAll // nothing stored under the prefix
			}
			if notFound(err) {
				return nil // removed while we walked
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if strings.HasPrefix(d.Name(), tempPrefix) {
			if d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		rel, err := filepath.Rel(s.dir, p)
		if err != nil {
			return err
		}
		name := filepath.ToSlash(rel)
		if d.IsDir() {
			if p == start {
				return nil
			}
			// Descend only into directories that can hold matches: their name with
			// a slash either extends the prefix or is a prefix of it.
			dn := name + "/"
			if strings.HasPrefix(dn, prefix) || strings.HasPrefix(prefix, dn) {
				return nil
			}
			return fs.SkipDir
		}
		if !d.Type().IsRegular() || !strings.HasPrefix(name, prefix) {
			return nil
		}
		return fn(name, d)
	})
	if err != nil {
		return fmt.Errorf("%s: list %q: %w", s.Location(), prefix, err)
	}
	return nil
}

// Delete removes the object; a missing object is not an error. The directory is not
// fsynced: if a crash undoes the removal the object simply reappears, and whoever
// deleted it (garbage collection) deletes it again on its next run. Emptied
// directories stay, since removing them would race with concurrent Puts.
func (s *Store) Delete(ctx context.Context, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	p, err := s.path(name)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !notFound(err) {
		return fmt.Errorf("%s: delete %q: %w", s.Location(), name, err)
	}
	return nil
}

// DeleteObjects removes every named object; a filesystem has no batch delete, so
// it is Delete for each.
func (s *Store) DeleteObjects(ctx context.Context, names []string) error {
	for _, name := range names {
		if err := s.Delete(ctx, name); err != nil {
			return err
		}
	}
	return nil
}
