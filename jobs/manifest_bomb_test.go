package jobs_test

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/blockferry/blockferry/internal/testutil"
	"github.com/blockferry/blockferry/jobs"
)

// TestManifestBomb: a manifest of a few dozen KiB that inflates to 512 MiB (a
// label after its size) fails the restore and the verify that read it with
// corrupt_data, at once, having allocated a few MiB.
func TestManifestBomb(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "repo")
	r := jobs.NewRunner(jobs.WithDefaultRepository("file://" + dir))
	disk, _ := rawDisk(t, 8*mib)
	m := fullBackupOfFile(t, r, disk)

	obj := testutil.ManifestBomb(m.ID, 8*mib, 1*mib, 512)
	if err := os.WriteFile(filepath.Join(dir, "backups", m.ID), obj, 0o600); err != nil {
		t.Fatal(err)
	}

	for _, kind := range []string{jobs.KindRestore, jobs.KindVerify} {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		spec := jobs.Spec{ID: "bomb-" + kind, Kind: kind, Backup: m.ID}
		if kind == jobs.KindRestore {
			spec.Target = &jobs.Endpoint{URI: "file://" + filepath.Join(t.TempDir(), "out.raw")}
		}
		_, err := runSpec(t, r, spec)
		runtime.ReadMemStats(&after)
		if f := jobs.Classify(err); f.Code != jobs.CodeCorrupt || f.Retryable {
			t.Errorf("%s of a %d-byte manifest bomb: %v: %+v", kind, len(obj), err, f)
		}
		if n := after.TotalAlloc - before.TotalAlloc; n > 64<<20 {
			t.Errorf("%s of a %d-byte manifest bomb allocated %d MiB", kind, len(obj), n>>20)
		}
	}
}
