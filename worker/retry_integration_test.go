package worker_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/blockferry/blockferry/internal/testutil"
	"github.com/blockferry/blockferry/worker"
)

// failingExport serves a raw image of size bytes with nbdkit, every request
// failing with EIO while the file it returns exists: a source whose trouble
// outlasts the request-level retries.
func failingExport(t *testing.T, e *env, size int64, seed uint64) (uri, sha, errorFile string) {
	t.Helper()
	img := filepath.Join(e.dir, "disk.raw")
	_, sha = randomDisk(t, img, size, seed)
	errorFile = filepath.Join(e.dir, "inject-errors")
	uri, _ = testutil.ServeNbdkit(t, "--filter=error", "file", img, "error=EIO", "error-rate=100%", "error-file="+errorFile)
	return uri, sha, errorFile
}

// retryIn is the retry_in_seconds of an event, failing when it has none.
func retryIn(t *testing.T, ev cloudEvent) float64 {
	t.Helper()
	var v struct {
		Data struct {
			RetryIn *float64 `json:"retry_in_seconds"`
		} `json:"data"`
	}
	if err := json.Unmarshal(ev.raw, &v); err != nil || v.Data.RetryIn == nil {
		t.Fatalf("retrying event without retry_in_seconds: %s", ev.raw)
	}
	return *v.Data.RetryIn
}

// TestTransientFailureRetried: a source that fails every request for longer
// than the request-level retries fail the attempt with io_error: the job shows
// a retrying event with retry_in_seconds and status retrying, then the next
// attempt, once the source is back, resumes from the first one's checkpoint and
// completes.
func TestTransientFailureRetried(t *testing.T) {
	e := newProcessEnv(t)
	uri, want, errorFile := failingExport(t, e, 32*mib, 31)
	e.startWorkerProc("wr", "--backoff", "4s")
	id := "transient-1"
	e.submit("backup", id, backupJob(id, "vm-31/vda", uri, slowJob))

	// The source fails once the first attempt recorded a checkpoint, so that
	// the second one has something to resume.
	checkpointed := e.waitCheckpoint(id)
	if err := os.WriteFile(errorFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	evs := e.waitEvents(id, 30*time.Second, func(evs []cloudEvent) bool { return len(ofType(evs, typeRetrying)) > 0 })
	retrying := only(t, evs, typeRetrying)
	if retrying.Data.Attempt != 1 || retrying.Data.Error == nil || retrying.Data.Error.Code != "io_error" || !retrying.Data.Error.Retryable {
		t.Errorf("retrying event %v, want attempt 1 with a retryable io_error", retrying)
	}
	if s := retryIn(t, retrying); s <= 0 || s > 4 {
		t.Errorf("retry_in_seconds %v, want the 4s backoff", s)
	}
	if st := e.status(id); st.State != worker.StateRetrying || st.Attempt != 1 {
		t.Errorf("status during the backoff: %+v, want retrying after attempt 1", st)
	}
	if err := os.Remove(errorFile); err != nil {
		t.Fatal(err)
	}

	done := terminalOnly(t, e.waitEnd(id, 90*time.Second), typeCompleted)
	if done.Data.Attempt != 2 {
		t.Errorf("completed %v, want attempt 2", done)
	}
	if r := statInt(t, done, "chunks_resumed"); r < int64(checkpointed) {
		t.Errorf("second attempt resumed %d chunks, the checkpoint had %d: %v", r, checkpointed, done.Data.Stats)
	}
	if st := e.status(id); st.State != worker.StateCompleted || st.Backup != done.Data.Backup {
		t.Errorf("status after the retry: %+v", st)
	}
	e.restoreAndCheck(id+"-restore", done.Data.Backup, want)
	e.waitDrained()
}

// TestLastAttemptFails: with --max-deliver 2, a job whose source keeps failing
// is retried once, and the second attempt's error is its failed event.
func TestLastAttemptFails(t *testing.T) {
	e := newProcessEnv(t)
	uri, _, errorFile := failingExport(t, e, 8*mib, 32)
	if err := os.WriteFile(errorFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	e.startWorkerProc("wl", "--backoff", "1s", "--max-deliver", "2")
	id := "transient-2"
	e.submit("backup", id, backupJob(id, "vm-32/vda", uri, ""))

	evs := e.waitEnd(id, 60*time.Second)
	failed := terminalOnly(t, evs, typeFailed)
	if r := only(t, evs, typeRetrying); r.Data.Attempt != 1 {
		t.Errorf("retrying event %v, want attempt 1", r)
	}
	if failed.Data.Attempt != 2 || failed.Data.Error == nil || failed.Data.Error.Code != "io_error" {
		t.Errorf("failed event %v, want attempt 2 with io_error", failed)
	}
	if st := e.status(id); st.State != worker.StateFailed || st.Attempt != 2 || st.Error == nil || st.Error.Code != "io_error" {
		t.Errorf("status: %+v, want failed at attempt 2 with io_error", st)
	}
	e.waitDrained()
}
