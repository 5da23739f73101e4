package jobs_test

import (
	"bytes"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"

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

	var obj bytes.Buffer
	obj.Write([]byte{1, 1}) // plain envelope, zstd
	w, err := zstd.NewWriter(&obj, zstd.WithEncoderLevel(zstd.SpeedFastest))
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte(`{"version":1,"id":"` + m.ID + `","size":8388608,"chunk_size":1048576,"labels":{"x":"`))
	junk := []byte(strings.Repeat("A", 1<<20))
	for range 512 {
		w.Write(junk)
	}
	w.Write([]byte(`"}}`))
	w.Close()
	if err := os.WriteFile(filepath.Join(dir, "backups", m.ID), obj.Bytes(), 0o600); err != nil {
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
			t.Errorf("%s of a %d-byte manifest bomb: %v: %+v", kind, obj.Len(), err, f)
		}
		if n := after.TotalAlloc - before.TotalAlloc; n > 64<<20 {
			t.Errorf("%s of a %d-byte manifest bomb allocated %d MiB", kind, obj.Len(), n>>20)
		}
	}
}
