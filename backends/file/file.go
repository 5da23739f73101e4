// Package file implements backends.Source and backends.Target on raw image files
// ("file:///var/lib/images/vda.raw" or a plain path). Allocation comes from
// SEEK_DATA/SEEK_HOLE; a file has no dirty bitmap, so asking for one is an error.
package file

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"

	"golang.org/x/sys/unix"

	"github.com/blockferry/blockferry/backends"
)

func init() {
	backends.Register(openSource, openTarget, "file", "")
}

// Image is a raw image file.
type Image struct {
	f    *os.File
	size int64
}

var (
	_ backends.Source = (*Image)(nil)
	_ backends.Target = (*Image)(nil)
)

func pathOf(u *url.URL) (string, error) {
	if u.Host != "" && u.Host != "localhost" {
		return "", fmt.Errorf("file URI %q: remote host %q", u, u.Host)
	}
	if u.Path == "" {
		return "", fmt.Errorf("file URI %q: no path", u)
	}
	return u.Path, nil
}

func openSource(_ context.Context, u *url.URL, o backends.SourceOptions) (backends.Source, error) {
	p, err := pathOf(u)
	if err != nil {
		return nil, err
	}
	if o.Bitmap != "" {
		return nil, fmt.Errorf("%s: %w: a raw file has no dirty bitmap (%q)", p, backends.ErrNoBitmap, o.Bitmap)
	}
	return OpenSource(p)
}

// OpenSource opens a raw image file or a block device for reading.
func OpenSource(path string) (*Image, error) {
	if err := checkDiskPath(path, backends.ErrInvalidSource); err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%w: %v", backends.ErrUnreachable, err)
		}
		return nil, err
	}
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return nil, err
	}
	return &Image{f: f, size: size}, nil
}

// checkDiskPath refuses what is no disk image, wrapping kind: only a regular file
// or a block device is one. A directory would otherwise report a size of 2^63-1
// (ext4's SEEK_END on a directory), and opening a named pipe blocks until someone
// writes to it. A path that does not exist passes: opening it says so.
func checkDiskPath(path string, kind error) error {
	st, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	return checkDiskMode(path, st.Mode(), kind)
}

// checkDiskMode refuses a file of mode m that is no disk image, wrapping kind.
func checkDiskMode(path string, m os.FileMode, kind error) error {
	if m.IsRegular() || (m&os.ModeDevice != 0 && m&os.ModeCharDevice == 0) {
		return nil
	}
	what := "special file"
	switch {
	case m.IsDir():
		what = "directory"
	case m&os.ModeCharDevice != 0:
		what = "character device"
	case m&os.ModeNamedPipe != 0:
		what = "named pipe"
	case m&os.ModeSocket != 0:
		what = "socket"
	}
	return fmt.Errorf("%s: %w: a %s, not a regular file or block device", path, kind, what)
}

func openTarget(_ context.Context, u *url.URL, o backends.TargetOptions) (backends.Target, error) {
	p, err := pathOf(u)
	if err != nil {
		return nil, err
	}
	return OpenTarget(p, o.Size)
}

// OpenTarget opens or creates a raw image file for writing and sets its size: a new
// file is sparse, so a restore leaves zero chunks as holes. A symlink is not
// followed: the worker's policy checked the path with its symlinks resolved, and
// one put in the file's place since must not send the writes elsewhere.
func OpenTarget(path string, size int64) (*Image, error) {
	if err := checkDiskPath(path, backends.ErrInvalidTarget); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW, 0o600)
	if errors.Is(err, unix.ELOOP) {
		return nil, fmt.Errorf("%s: %w: a symlink, which a restore does not follow (name the file it points to)", path, backends.ErrInvalidTarget)
	}
	if errors.Is(err, os.ErrNotExist) { // its directory does not exist
		return nil, fmt.Errorf("%w: %w", backends.ErrInvalidTarget, err)
	}
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err == nil {
		// What was opened, not what was checked before: it may have been replaced.
		err = checkDiskMode(path, st.Mode(), backends.ErrInvalidTarget)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	// A regular file is sized to the image. A block device is never truncated
	// (nor grown): its size is fixed, and one smaller than the image is refused.
	if st.Mode().IsRegular() {
		if err := f.Truncate(size); err != nil {
			f.Close()
			return nil, err
		}
	}
	cur, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return nil, err
	}
	if cur < size {
		f.Close()
		return nil, fmt.Errorf("%s: %w: %d bytes, need %d", path, backends.ErrTooSmall, cur, size)
	}
	return &Image{f: f, size: size}, nil
}

// Size is the image size.
func (i *Image) Size() int64 { return i.size }

// ReadAt reads from the image; bytes past its end read as an error, as io.ReaderAt
// requires. A file read does not wait on anything ctx could end.
func (i *Image) ReadAt(_ context.Context, p []byte, off int64) (int, error) {
	return i.f.ReadAt(p, off)
}

// WriteAt writes to the image, and starts writing the range back to the disk
// (sync_file_range): otherwise the kernel holds a restore's writes in the page
// cache until Flush, or until a tenth of the memory is dirty, and the disk idles
// while the restore decodes, then works alone while Flush waits for it.
func (i *Image) WriteAt(p []byte, off int64) (int, error) {
	n, err := i.f.WriteAt(p, off)
	if err == nil && n > 0 {
		// Only a hint: a file system without it still gets everything at Flush.
		_ = unix.SyncFileRange(int(i.f.Fd()), off, int64(n), unix.SYNC_FILE_RANGE_WRITE)
	}
	return n, err
}

// Extents reports data and holes with SEEK_DATA/SEEK_HOLE, or all data where the
// file (a block device) does not support them. Every range is dirty: a file has
// no bitmap.
func (i *Image) Extents(ctx context.Context, start, length int64) ([]backends.Extent, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	end := min(start+length, i.size)
	if start >= end {
		return nil, nil
	}
	var out []backends.Extent
	fd := int(i.f.Fd())
	for pos := start; pos < end; {
		data, err := unix.Seek(fd, pos, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) { // no data from pos to the end of the file
			data = end
		} else if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) {
			// A block device (or a filesystem without SEEK_DATA) has no map of
			// its data: all of it is data, and a backup finds zero chunks by content.
			return append(out, backends.Extent{Start: pos, Length: end - pos, Dirty: true}), nil
		} else if err != nil {
			return nil, fmt.Errorf("%s: SEEK_DATA: %w", i.f.Name(), err)
		}
		if data > pos {
			out = append(out, backends.Extent{Start: pos, Length: min(data, end) - pos, Dirty: true, Zero: true})
			pos = min(data, end)
			continue
		}
		hole, err := unix.Seek(fd, pos, unix.SEEK_HOLE)
		if err != nil {
			return nil, fmt.Errorf("%s: SEEK_HOLE: %w", i.f.Name(), err)
		}
		hole = min(hole, end)
		out = append(out, backends.Extent{Start: pos, Length: hole - pos, Dirty: true})
		pos = hole
	}
	return out, nil
}

// Zero punches a hole, so the range reads as zeroes and takes no space.
func (i *Image) Zero(_ context.Context, off, length int64) error {
	err := unix.Fallocate(int(i.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
	if errors.Is(err, unix.EOPNOTSUPP) { // e.g. a block device or an old filesystem
		return i.writeZeroes(off, length)
	}
	return err
}

func (i *Image) writeZeroes(off, length int64) error {
	buf := make([]byte, min(length, 1<<20))
	for length > 0 {
		n := min(length, int64(len(buf)))
		if _, err := i.f.WriteAt(buf[:n], off); err != nil {
			return err
		}
		off, length = off+n, length-n
	}
	return nil
}

// Flush makes the writes durable.
func (i *Image) Flush(context.Context) error { return i.f.Sync() }

// Close closes the file.
func (i *Image) Close() error { return i.f.Close() }
