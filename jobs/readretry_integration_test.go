package jobs_test

import (
	"crypto/sha256"
	"encoding/hex"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/blockferry/blockferry/internal/testutil"
	"github.com/blockferry/blockferry/jobs"
)

// TestBackupRidesOutReadErrors: with nbdkit failing 1% of all requests (reads
// and block status) with EIO, a backup of 512 chunks, each read once, completes
// on its first attempt and restores bit for bit. Without request-level retries
// one of its 512+ requests fails with a probability above 99%.
func TestBackupRidesOutReadErrors(t *testing.T) {
	const size = 32 * mib
	data := make([]byte, size)
	rand.NewChaCha8([32]byte{7}).Read(data)
	img := filepath.Join(t.TempDir(), "disk.raw")
	if err := os.WriteFile(img, data, 0o600); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	uri, _ := testutil.ServeNbdkit(t, "--filter=error", "file", img, "error=EIO", "error-rate=1%")

	var failed atomic.Int64
	r := jobs.NewRunner(jobs.WithDefaultRepository("file://"+filepath.Join(t.TempDir(), "repo")),
		jobs.WithObservers(func(_ string, _ time.Duration, err error) {
			if err != nil {
				failed.Add(1)
			}
		}, nil))
	res, err := runSpec(t, r, jobs.Spec{ID: "eio", Kind: jobs.KindBackup, Disk: "vm1/vda", Source: &jobs.Endpoint{URI: uri},
		Options: jobs.Options{ChunkSize: 64 << 10, Concurrency: 4}})
	if err != nil {
		t.Fatalf("backup at 1%% EIO: %v", err)
	}
	if failed.Load() == 0 {
		t.Fatal("no source request failed: the error filter injected nothing, the test proves nothing")
	}
	t.Logf("%d source requests failed and were retried", failed.Load())
	out, err := restoreToFile(t, r, res.Backup.ID)
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	if got := fileSum(t, out); got != hex.EncodeToString(sum[:]) {
		t.Errorf("restored image differs from the source: %s, want %s", got, hex.EncodeToString(sum[:]))
	}
}
