package worker_test

import (
	"context"
	"net/url"
	"path/filepath"
	"testing"
	"time"

	"github.com/blockferry/blockferry/backends"
	"github.com/blockferry/blockferry/worker"
)

// panicScheme is a source that panics when a job opens it: a bug in a backend,
// or an input nobody thought of.
const panicScheme = "test-panic"

func init() {
	backends.Register(func(context.Context, *url.URL, backends.SourceOptions) (backends.Source, error) {
		panic("test source: deliberate panic")
	}, nil, panicScheme)
}

// TestPanickingJob: a job whose run panics fails at its first attempt with code
// internal, not retried; the job running beside it on the same worker completes,
// and the worker goes on taking jobs.
func TestPanickingJob(t *testing.T) {
	e := newEmbeddedEnv(t)
	w := e.startWorker("wp", worker.WithJobs(2))
	e.waitProvisioned()
	uri, want := randomDisk(t, filepath.Join(e.dir, "disk.raw"), 8*mib, 11)

	e.submit("backup", "beside-1", backupJob("beside-1", "vm-11/vda", uri, slowJob))
	e.waitProgress("beside-1", 30*time.Second)
	e.submit("backup", "panic-1", backupJob("panic-1", "vm-11/vdb", panicScheme+"://disk", ""))

	failed := terminalOnly(t, e.waitEnd("panic-1", 30*time.Second), typeFailed)
	if failed.Data.Attempt != 1 || failed.Data.Error == nil || failed.Data.Error.Code != "internal" || failed.Data.Error.Retryable {
		t.Errorf("panicked job: %v retryable %v, want failed at attempt 1 with code internal, not retryable", failed, failed.Data.Error)
	}
	if st := e.status("panic-1"); st.State != worker.StateFailed || st.Error == nil || st.Error.Code != "internal" {
		t.Errorf("status of the panicked job: %+v", st)
	}
	done := terminalOnly(t, e.waitEnd("beside-1", 60*time.Second), typeCompleted)
	if !w.w.Ready() {
		t.Error("worker not ready after a job panicked")
	}
	e.restoreAndCheck("beside-1-restore", done.Data.Backup, want)
	e.waitDrained()
}
