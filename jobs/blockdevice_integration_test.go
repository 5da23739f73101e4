package jobs_test

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/blockferry/blockferry/internal/testutil"
	"github.com/blockferry/blockferry/jobs"
)

// attachLoop attaches image to a free loop device and returns the device's path;
// the device is detached when the test ends. Where loop devices cannot be set up
// (no privilege, no /dev/loop-control) the test is skipped, but not in CI.
func attachLoop(t *testing.T, image string) string {
	t.Helper()
	losetup := testutil.RequireTool(t, "losetup")
	out, err := exec.Command(losetup, "--find", "--show", "--read-only", image).CombinedOutput()
	if err != nil {
		if testutil.InCI() {
			t.Fatalf("losetup: %v: %s", err, out)
		}
		t.Skipf("loop devices are not available here: losetup: %v: %s", err, strings.TrimSpace(string(out)))
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command(losetup, "--detach", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup --detach %s: %v: %s", dev, err, out)
		}
	})
	return dev
}

// TestBlockDeviceSource backs up a raw block device (a loop device over an image
// with text, random data and holes) as a file:// source and restores it bit for
// bit. A block device has no SEEK_DATA: the backup treats it as all data and
// finds its zero chunks by content.
func TestBlockDeviceSource(t *testing.T) {
	image, sum := rawDisk(t, 24*mib)
	dev := attachLoop(t, image)
	r := jobs.NewRunner(jobs.WithDefaultRepository("file://" + filepath.Join(t.TempDir(), "repo")))
	m := fullBackupOfFile(t, r, dev)
	if m.Size != 24*mib {
		t.Fatalf("backup of %s: size %d, want %d", dev, m.Size, 24*mib)
	}
	// rawDisk writes 2 MiB of text (3 chunks) and 3 MiB of noise (4 chunks); the
	// rest reads as zeroes and is stored as zero markers, not uploaded.
	if m.Stats.ChunksZero < 24-7 {
		t.Errorf("backup of %s: %d zero chunks, want at least %d", dev, m.Stats.ChunksZero, 24-7)
	}
	out, err := restoreToFile(t, r, m.ID)
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	if got := fileSum(t, out); got != sum {
		t.Errorf("restore of the block device's backup: sha256 %s, want %s", got, sum)
	}
}
