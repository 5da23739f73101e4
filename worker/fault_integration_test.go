package worker_test

import (
	"context"
	"fmt"
	"net/url"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/blockferry/blockferry/backends"
	"github.com/blockferry/blockferry/jobs"
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
	uri, want := randomDisk(t, filepath.Join(e.dir, "disk.raw"), 24*mib, 11)

	e.submit("backup", "beside-1", backupJob("beside-1", "vm-11/vda", uri, slowJob))
	e.waitEvents("beside-1", 30*time.Second, func(evs []cloudEvent) bool { return len(evs) > 0 })
	e.submit("backup", "panic-1", backupJob("panic-1", "vm-11/vdb", panicScheme+"://disk", ""))

	failed := terminalOnly(t, e.waitEnd("panic-1", 30*time.Second), typeFailed)
	if failed.Data.Attempt != 1 || failed.Data.Error == nil || failed.Data.Error.Code != "internal" || failed.Data.Error.Retryable {
		t.Errorf("panicked job: %v retryable %v, want failed at attempt 1 with code internal, not retryable", failed, failed.Data.Error)
	}
	if st := e.status("panic-1"); st.State != worker.StateFailed || st.Error == nil || st.Error.Code != "internal" {
		t.Errorf("status of the panicked job: %+v", st)
	}
	done := terminalOnly(t, e.waitEnd("beside-1", 60*time.Second), typeCompleted)
	if !done.Time.After(failed.Time) {
		t.Errorf("the job beside ended (%s) before the panicking one (%s): they did not run side by side", done.Time, failed.Time)
	}
	if !w.w.Ready() {
		t.Error("worker not ready after a job panicked")
	}
	e.restoreAndCheck("beside-1-restore", done.Data.Backup, want)
	e.waitDrained()
}

// TestForgedAdvisory: anyone may publish on JetStream's advisory subjects. A
// forged max-deliveries advisory for a running job (on its only attempt) and for
// a queued one fails neither: both complete, once.
func TestForgedAdvisory(t *testing.T) {
	e := newEmbeddedEnv(t)
	tp := e.topology()
	tp.MaxDeliver = 1 // the running attempt is the last one
	e.startWorker("wf", worker.WithTopology(tp))
	e.waitProvisioned()
	uri, want := randomDisk(t, filepath.Join(e.dir, "disk.raw"), 24*mib, 12)

	seqs := map[string]uint64{}
	for _, id := range []string{"forged-running", "forged-queued"} {
		ack, err := e.publish("backup", id, []byte(backupJob(id, "vm-12/"+id, uri, slowJob)))
		if err != nil || ack.Duplicate {
			t.Fatalf("publish %s: %+v %v", id, ack, err)
		}
		seqs[id] = ack.Sequence
	}
	e.waitEvents("forged-running", 30*time.Second, func(evs []cloudEvent) bool { return len(evs) > 0 })
	for id, seq := range seqs {
		body := fmt.Sprintf(`{"type":"io.nats.jetstream.advisory.v1.max_deliver","stream":%q,"consumer":%q,"stream_seq":%d,"deliveries":5}`,
			jobsStream, consumerName, seq)
		if err := e.nc.Publish("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES."+jobsStream+"."+consumerName, []byte(body)); err != nil {
			t.Fatalf("forging the advisory for %s: %v", id, err)
		}
	}
	if err := e.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	floodAdvisories(t, e, seqs["forged-running"])
	for id := range seqs {
		done := terminalOnly(t, e.waitEnd(id, 90*time.Second), typeCompleted)
		if st := e.status(id); st.State != worker.StateCompleted || st.Backup != done.Data.Backup {
			t.Errorf("status of %s: %+v, want completed with %s", id, st, done.Data.Backup)
		}
		e.restoreAndCheck(id+"-restore", done.Data.Backup, want)
	}
	e.waitDrained()
}

// floodAdvisories forges 5000 advisories for job message seq and 5000 for
// messages that do not exist, and checks that the worker's goroutines stay
// bounded meanwhile: each check of an advisory waits seconds, and one goroutine
// per advisory would be 10000.
func floodAdvisories(t *testing.T, e *env, seq uint64) {
	t.Helper()
	base := runtime.NumGoroutine()
	subject := "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES." + jobsStream + "." + consumerName
	for i := range uint64(5000) {
		for _, s := range []uint64{seq, 1_000_000 + i} {
			body := fmt.Sprintf(`{"stream":%q,"consumer":%q,"stream_seq":%d}`, jobsStream, consumerName, s)
			if err := e.nc.Publish(subject, []byte(body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := e.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	peak := 0
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		peak = max(peak, runtime.NumGoroutine())
	}
	if peak > base+500 {
		t.Errorf("10000 forged advisories: %d goroutines at the peak, %d before", peak, base)
	}
}

// TestReadyFollowsFetching: a worker that cannot fetch jobs (its consumer is
// gone) says it is not ready, and ready again once fetching works.
func TestReadyFollowsFetching(t *testing.T) {
	e := newEmbeddedEnv(t)
	w := e.startWorker("wr")
	e.waitProvisioned()
	ctx, cancel := ctxTimeout(30 * time.Second)
	defer cancel()
	if err := e.js.DeleteConsumer(ctx, jobsStream, consumerName); err != nil {
		t.Fatal(err)
	}
	waitReady := func(want bool) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for w.w.Ready() != want {
			if time.Now().After(deadline) {
				t.Fatalf("worker Ready() stayed %v for 15s", !want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitReady(false)
	if err := worker.Provision(ctx, e.js, e.topology()); err != nil {
		t.Fatal(err)
	}
	waitReady(true)
	uri, _ := randomDisk(t, filepath.Join(e.dir, "disk.raw"), 2*mib, 13)
	e.submit("backup", "after-refetch", backupJob("after-refetch", "vm-13/vda", uri, ""))
	terminalOnly(t, e.waitEnd("after-refetch", 30*time.Second), typeCompleted)
}

// TestReusedJobID: a job id used again is answered with one failed event
// (duplicate_job, naming the earlier outcome) per reuse: by the worker for a
// message JetStream let through (the duplicate window had passed: here, another
// Nats-Msg-Id), by Client.Submit for one JetStream dropped. The job's status
// and its backup stay the earlier job's, and nothing reads the disk again.
func TestReusedJobID(t *testing.T) {
	e := newEmbeddedEnv(t)
	e.startWorker("wd")
	e.waitProvisioned()
	uri, _ := randomDisk(t, filepath.Join(e.dir, "disk.raw"), 2*mib, 14)
	const id = "reused-1"
	body := backupJob(id, "vm-14/vda", uri, "")
	e.submit("backup", id, body)
	done := terminalOnly(t, e.waitEnd(id, 30*time.Second), typeCompleted)

	if _, err := e.publish("backup", id+"-after-the-window", []byte(body)); err != nil {
		t.Fatal(err)
	}
	hasDuplicates := func(n int) func([]cloudEvent) bool {
		return func(evs []cloudEvent) bool { return len(ofType(evs, typeFailed)) >= n }
	}
	e.waitEvents(id, 30*time.Second, hasDuplicates(1))
	spec := jobs.Spec{SpecVersion: 1, ID: id, Kind: "backup", Disk: "vm-14/vda", Source: &jobs.Endpoint{URI: uri}}
	ctx, cancel := ctxTimeout(10 * time.Second)
	defer cancel()
	if isNew, err := e.client().Submit(ctx, spec); err != nil || isNew {
		t.Fatalf("Submit of a used id: new %v, error %v", isNew, err)
	}
	evs := e.waitEvents(id, 30*time.Second, hasDuplicates(2))
	if n := len(ofType(evs, typeCompleted, typeStarted)); n != 2 {
		t.Errorf("want the one started and completed of the first job, got %v", evs)
	}
	failed := ofType(evs, typeFailed)
	if len(failed) != 2 {
		t.Fatalf("want one duplicate_job event per reuse, got %v", evs)
	}
	for _, ev := range failed {
		if ev.Data.Error == nil || ev.Data.Error.Code != "duplicate_job" || ev.Data.Error.Retryable ||
			!strings.Contains(ev.Data.Error.Message, "completed") || !strings.Contains(ev.Data.Error.Message, done.Data.Backup) {
			t.Errorf("duplicate event %v: want duplicate_job naming completed backup %s", ev, done.Data.Backup)
		}
	}
	if st := e.status(id); st.State != worker.StateCompleted || st.Backup != done.Data.Backup {
		t.Errorf("status %+v, want the first job's outcome", st)
	}
	if ms := e.backups(); len(ms) != 1 {
		t.Errorf("repository holds %d backups, want 1", len(ms))
	}
	e.waitDrained()
}

// TestPausedWorker: a worker process paused (SIGSTOP) past the ack wait loses its
// job to another worker; when it goes on (SIGCONT) its attempt stops within a
// heartbeat interval, so that only the new attempt reads the source after the
// pause, and the job completes once.
func TestPausedWorker(t *testing.T) {
	e := newProcessEnv(t)
	uri, want := randomDisk(t, filepath.Join(e.dir, "disk.raw"), 32*mib, 15)
	a := e.startWorkerProc("wa", "--ack-wait", "2s")
	const id = "paused-1"
	e.submit("backup", id, backupJob(id, "vm-15/vda", uri, slowJob))
	e.waitProgress(id, 30*time.Second)
	e.startWorkerProc("wb", "--ack-wait", "2s")

	a.signal(syscall.SIGSTOP)
	e.waitEvents(id, 30*time.Second, func(evs []cloudEvent) bool {
		return len(ofType(evs, typeStarted)) == 2 && evs[len(evs)-1].Type == typeProgress
	})
	resumed := time.Now()
	a.signal(syscall.SIGCONT)

	evs := e.waitEnd(id, 60*time.Second)
	done := terminalOnly(t, evs, typeCompleted)
	if done.Data.Attempt != 2 || done.Data.Worker != "wb" {
		t.Errorf("completed %v, want attempt 2 on wb", done)
	}
	// The paused attempt may publish the progress it was about to as it wakes; a
	// heartbeat interval (ack wait / 4) later it has stopped.
	for _, ev := range ofType(evs, typeProgress) {
		if ev.Data.Worker == "wa" && ev.Time.After(resumed.Add(time.Second)) {
			t.Errorf("paused attempt still ran %s after SIGCONT: %v", ev.Time.Sub(resumed), ev)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for !a.logged("stopping a job whose delivery was lost") {
		if time.Now().After(deadline) {
			t.Fatal("worker wa did not stop its attempt after the pause")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if st := e.status(id); st.State != worker.StateCompleted || st.Attempt != 2 || st.Worker != "wb" {
		t.Errorf("status %+v, want completed by attempt 2 on wb", st)
	}
	e.restoreAndCheck(id+"-restore", done.Data.Backup, want)
	e.waitDrained()
}
