package file

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/blockferry/blockferry/backends"
)

// TestOnlyDiskImages: a source or target is a regular file or a block device;
// anything else is refused with the backends sentinel for it, and opening a named
// pipe does not block.
func TestOnlyDiskImages(t *testing.T) {
	dir := t.TempDir()
	regular := filepath.Join(dir, "disk.raw")
	if err := os.WriteFile(regular, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	for _, tc := range []struct {
		path string
		want error // nil: opens
	}{
		{regular, nil},
		{dir, backends.ErrInvalidSource},
		{fifo, backends.ErrInvalidSource},
		{sock, backends.ErrInvalidSource},
		{"/dev/null", backends.ErrInvalidSource},
		{filepath.Join(dir, "none.raw"), backends.ErrUnreachable},
	} {
		img, err := OpenSource(tc.path)
		if tc.want == nil {
			if err != nil || img.Size() != 4096 {
				t.Errorf("source %s: %v", tc.path, err)
			}
		} else if !errors.Is(err, tc.want) {
			t.Errorf("source %s: %v, want %v", tc.path, err, tc.want)
		}
		if img != nil {
			img.Close()
		}
	}

	for _, tc := range []struct {
		path string
		want error
	}{
		{regular, nil},
		{filepath.Join(dir, "new.raw"), nil},
		{dir, backends.ErrInvalidTarget},
		{fifo, backends.ErrInvalidTarget},
		{"/dev/null", backends.ErrInvalidTarget},
		{filepath.Join(dir, "none", "new.raw"), backends.ErrInvalidTarget},
	} {
		img, err := OpenTarget(tc.path, 8192)
		if !errors.Is(err, tc.want) || (tc.want == nil && img.Size() != 8192) {
			t.Errorf("target %s: %v, want %v", tc.path, err, tc.want)
		}
		if img != nil {
			img.Close()
		}
	}
}
