package file

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/blockferry/blockferry/backends"
	"github.com/blockferry/blockferry/internal/testutil"
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

// TestTargetDoesNotFollowSymlinks: a symlink in a target's place (to an existing
// file, or to one it would create) is refused, and what it points to stays as it
// was: the policy's check of the resolved path cannot be sidestepped by swapping
// in a symlink before the open.
func TestTargetDoesNotFollowSymlinks(t *testing.T) {
	dir := t.TempDir()
	victim := filepath.Join(dir, "authorized_keys")
	content := []byte("ssh-ed25519 AAAA… operator\n")
	if err := os.WriteFile(victim, content, 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "restore.raw")
	dangling := filepath.Join(dir, "new.raw")
	if err := os.Symlink(victim, link); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(dir, "created.raw"), dangling); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{link, dangling} {
		img, err := OpenTarget(path, 8192)
		if !errors.Is(err, backends.ErrInvalidTarget) || !strings.Contains(err.Error(), "symlink") {
			t.Errorf("target %s: %v, want ErrInvalidTarget about a symlink", path, err)
		}
		if img != nil {
			img.Close()
		}
	}
	if got, err := os.ReadFile(victim); err != nil || !bytes.Equal(got, content) {
		t.Errorf("the symlink's target changed: %q, %v", got, err)
	}
	if _, err := os.Lstat(filepath.Join(dir, "created.raw")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a file was created through a dangling symlink: %v", err)
	}
}

// TestBlockDeviceTargetIsNotTruncated: a block device larger than the image is
// written in its first bytes and keeps its size and the rest of its content; one
// smaller than the image is refused, not grown.
func TestBlockDeviceTargetIsNotTruncated(t *testing.T) {
	image := filepath.Join(t.TempDir(), "backing.raw")
	backing := bytes.Repeat([]byte{0x5a}, 1<<20)
	if err := os.WriteFile(image, backing, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "--find", "--show", image).CombinedOutput()
	if err != nil {
		if testutil.InCI() {
			t.Fatalf("losetup (CI runs as root with loop devices): %v: %s", err, out)
		}
		t.Skipf("no loop device: %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { _ = exec.Command("losetup", "--detach", dev).Run() })

	img, err := OpenTarget(dev, 256<<10)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := img.WriteAt(make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
	if err := img.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	img.Close()
	if _, err := OpenTarget(dev, 2<<20); !errors.Is(err, backends.ErrTooSmall) {
		t.Errorf("a device smaller than the image: %v, want ErrTooSmall", err)
	}
	_ = exec.Command("losetup", "--detach", dev).Run()
	got, err := os.ReadFile(image)
	if err != nil || len(got) != len(backing) || !bytes.Equal(got[4096:], backing[4096:]) || !bytes.Equal(got[:4096], make([]byte, 4096)) {
		t.Errorf("the device's content or size changed beyond the write: %d bytes, %v", len(got), err)
	}
}
