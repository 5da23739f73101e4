package worker_test

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/blockferry/blockferry/internal/testutil"
)

// peakRSS is the peak resident set size of a process (VmHWM), in bytes.
func peakRSS(t *testing.T, pid int) int64 {
	t.Helper()
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("VmHWM of %d: %q: %v", pid, v, err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no VmHWM in /proc/%d/status", pid)
	return 0
}

// TestPoisonPills: jobs that once killed workers, a source of an absurd size
// (an NBD export of 2^63-1 bytes, a directory as file://), a restore of a
// manifest of 60 KiB that inflates to 1 GiB and one of a backup whose chunk file
// was made 1 TiB long (sparse), each fail at their first attempt
// with a permanent code; the worker process stays alive, the job running beside
// them completes, and the worker's peak RSS stays within the bound the README
// states: --memory-limit plus 192 MiB.
func TestPoisonPills(t *testing.T) {
	e := newProcessEnv(t)
	const memoryLimit = 128 * mib
	p := e.startWorkerProc("wpoison", "--jobs", "2", "--memory-limit", strconv.Itoa(memoryLimit))
	e.waitProvisioned()

	seedURI, _ := randomDisk(t, filepath.Join(e.dir, "seed.raw"), 8*mib, 21)
	e.submit("backup", "seed", backupJob("seed", "vm-21/vda", seedURI, `{"chunk_size":1048576}`))
	seed := terminalOnly(t, e.waitEnd("seed", 60*time.Second), typeCompleted).Data.Backup
	bomb := testutil.ManifestBomb(seed, 8*mib, 1*mib, 1024)
	if err := os.WriteFile(filepath.Join(e.dir, "repository", "backups", seed), bomb, 0o600); err != nil {
		t.Fatal(err)
	}

	planted := plantHugeChunk(t, e)

	uri, want := randomDisk(t, filepath.Join(e.dir, "disk.raw"), 24*mib, 22)
	e.submit("backup", "beside", backupJob("beside", "vm-21/vdb", uri, slowJob))
	e.waitEvents("beside", 30*time.Second, func(evs []cloudEvent) bool { return len(evs) > 0 })

	huge, _ := testutil.ServeNbdkit(t, "null", "size=9223372036854775807")
	dir := filepath.Join(e.dir, "a-directory")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	// The worker's source policy sees the directory first: a file source must
	// be a regular file or a block device (jobs.Runner without a policy calls it
	// source_invalid).
	pills := map[string]string{"huge-export": "source_invalid", "directory": "forbidden", "bomb": "corrupt_data", "huge-chunk": "corrupt_data"}
	e.submit("backup", "huge-export", backupJob("huge-export", "vm-21/vdc", huge, ""))
	e.submit("backup", "directory", backupJob("directory", "vm-21/vdd", "file://"+dir, ""))
	e.submit("restore", "bomb", restoreJob("bomb", seed, filepath.Join(e.dir, "bomb.raw")))
	e.submit("restore", "huge-chunk", restoreJob("huge-chunk", planted, filepath.Join(e.dir, "huge-chunk.raw")))

	var lastFailed time.Time
	for id, code := range pills {
		failed := terminalOnly(t, e.waitEnd(id, 60*time.Second), typeFailed)
		if failed.Data.Attempt != 1 || failed.Data.Error == nil || failed.Data.Error.Code != code || failed.Data.Error.Retryable {
			t.Errorf("%s: %v, want failed at attempt 1 with %s, not retryable", id, failed, code)
		}
		if failed.Time.After(lastFailed) {
			lastFailed = failed.Time
		}
	}
	done := terminalOnly(t, e.waitEnd("beside", 90*time.Second), typeCompleted)
	if !done.Time.After(lastFailed) {
		t.Errorf("the job beside ended (%s) before the last pill (%s): they did not run side by side", done.Time, lastFailed)
	}
	select {
	case <-p.exited:
		t.Fatalf("the worker exited: %v", p.cmd.ProcessState)
	default:
	}
	e.restoreAndCheck("beside-restore", done.Data.Backup, want)

	rss := peakRSS(t, p.cmd.Process.Pid)
	t.Logf("peak RSS of the worker: %d MiB (bound %d MiB)", rss>>20, (memoryLimit+192*mib)>>20)
	if rss > memoryLimit+192*mib {
		t.Errorf("peak RSS of the worker %d MiB, above --memory-limit + 192 MiB = %d MiB", rss>>20, (memoryLimit+192*mib)>>20)
	}
	e.waitDrained()
}

// plantHugeChunk backs up a small disk and makes one of the chunk files it added
// 1 TiB long (sparse: it costs nothing on disk), as a hostile writer of the
// repository could; reading it whole once took the worker down with "out of
// memory". It returns the backup's id.
func plantHugeChunk(t *testing.T, e *env) string {
	t.Helper()
	chunks := func() map[string]bool {
		found := map[string]bool{}
		_ = filepath.WalkDir(filepath.Join(e.dir, "repository", "chunks"), func(p string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				found[p] = true
			}
			return nil
		})
		return found
	}
	before := chunks()
	uri, _ := randomDisk(t, filepath.Join(e.dir, "planted.raw"), 4*mib, 23)
	e.submit("backup", "planted", backupJob("planted", "vm-21/vde", uri, `{"chunk_size":1048576}`))
	backup := terminalOnly(t, e.waitEnd("planted", 60*time.Second), typeCompleted).Data.Backup
	for p := range chunks() {
		if !before[p] {
			if err := os.Truncate(p, 1<<40); err != nil {
				t.Fatal(err)
			}
			return backup
		}
	}
	t.Fatal("the backup added no chunk file")
	return ""
}
