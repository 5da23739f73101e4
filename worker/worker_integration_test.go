package worker_test

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/blockferry/blockferry/internal/testutil"
	"github.com/blockferry/blockferry/worker"
)

// checkEnvelope checks the CloudEvents envelope and the common data of every event
// of a job.
func checkEnvelope(t *testing.T, evs []cloudEvent, id, kind, disk, workerName string, attempt int, since time.Time) {
	t.Helper()
	ids := map[string]bool{}
	for _, ev := range evs {
		switch {
		case ev.SpecVersion != "1.0":
			t.Errorf("%v: specversion %q, want 1.0", ev, ev.SpecVersion)
		case ev.ID == "" || ids[ev.ID]:
			t.Errorf("%v: id %q empty or repeated", ev, ev.ID)
		case ev.Source == "":
			t.Errorf("%v: no source", ev)
		case !strings.HasPrefix(ev.Type, "io.blockferry.job."):
			t.Errorf("%v: type %q", ev, ev.Type)
		case ev.Subject != id || ev.subject != eventsSubject+id:
			t.Errorf("%v: subject %q on %s, want %s", ev, ev.Subject, ev.subject, id)
		case ev.Time.Before(since.Add(-time.Second)) || ev.Time.After(time.Now().Add(time.Second)):
			t.Errorf("%v: time %s is not now", ev, ev.Time)
		case ev.DataContentType != "application/json":
			t.Errorf("%v: datacontenttype %q", ev, ev.DataContentType)
		case ev.Data.JobID != id || ev.Data.Kind != kind || ev.Data.Disk != disk:
			t.Errorf("%v: data job_id %q kind %q disk %q, want %s %s %s", ev, ev.Data.JobID, ev.Data.Kind, ev.Data.Disk, id, kind, disk)
		case ev.Data.Attempt != attempt || !ev.dataField("attempt"):
			t.Errorf("%v: data.attempt %d, want %d", ev, ev.Data.Attempt, attempt)
		case ev.Data.Worker != workerName:
			t.Errorf("%v: data.worker %q, want %q", ev, ev.Data.Worker, workerName)
		}
		ids[ev.ID] = true
	}
}

// checkLifecycle checks started, then progress events only, then completed.
func checkLifecycle(t *testing.T, evs []cloudEvent, minProgress int) cloudEvent {
	t.Helper()
	if len(evs) < 2+minProgress || evs[0].Type != typeStarted {
		t.Fatalf("want started, %d+ progress, completed; got %v", minProgress, evs)
	}
	for _, ev := range evs[1 : len(evs)-1] {
		if ev.Type != typeProgress {
			t.Fatalf("want only progress events between started and completed; got %v", evs)
		}
	}
	if n := len(ofType(evs, typeProgress)); n < minProgress {
		t.Fatalf("%d progress events, want at least %d: %v", n, minProgress, evs)
	}
	return terminalOnly(t, evs, typeCompleted)
}

// TestBackupAndRestoreJobs publishes a backup and a restore job by hand, through
// the embedded server with an in-process worker, through a nats-server process
// and through a 3-node cluster (R3 streams and buckets) with a worker process, and
// follows their events as a monitor would.
func TestBackupAndRestoreJobs(t *testing.T) {
	for _, mode := range []string{"embedded", "nats-server", "cluster"} {
		t.Run(mode, func(t *testing.T) {
			var e *env
			workerName := "w-" + mode
			switch mode {
			case "embedded":
				e = newEmbeddedEnv(t)
				e.startWorker(workerName)
			case "cluster":
				e = newClusterEnv(t)
				e.startWorkerProc(workerName)
			default:
				e = newProcessEnv(t)
				e.startWorkerProc(workerName)
			}
			e.waitProvisioned()

			// A 16 MiB qcow2 disk: 1 MiB regions of distinct patterns, a zeroed
			// range and unallocated ones. The reference is its raw conversion.
			const size = 16 * mib
			image := filepath.Join(e.dir, "disk.qcow2")
			testutil.MakeQcow2(t, image, size)
			var writes []string
			for i := range 16 {
				switch {
				case i == 5:
				case i == 8 || i == 9:
					writes = append(writes, fmt.Sprintf("write -z %dM 1M", i))
				default:
					writes = append(writes, fmt.Sprintf("write -P %d %dM 1M", 0x10+i, i))
				}
			}
			writes = append(writes, "write -P 0xee 15872k 4k") // not chunk aligned
			testutil.QemuIO(t, image, writes...)
			raw := filepath.Join(e.dir, "disk.raw")
			testutil.ConvertToRaw(t, image, raw)
			want := testutil.SHA256File(t, raw)
			uri, stop := testutil.ServeQemuNBD(t, image, "")
			defer stop()

			// A monitor follows the job's subject live, from before it is submitted.
			id := "vm42-vda-" + mode
			const disk = "vm-42/vda"
			ctx, cancel := ctxTimeout(90 * time.Second)
			defer cancel()
			cons, err := e.js.OrderedConsumer(ctx, eventsStream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{eventsSubject + id}})
			if err != nil {
				t.Fatal(err)
			}
			it, err := cons.Messages()
			if err != nil {
				t.Fatal(err)
			}
			defer it.Stop()
			live := make(chan []cloudEvent, 1)
			go func() {
				var evs []cloudEvent
				defer func() { live <- evs }()
				for {
					m, err := it.Next()
					if err != nil {
						return
					}
					ev, err := decodeEvent(m.Subject(), m.Data())
					if err != nil {
						return
					}
					evs = append(evs, ev)
					if ev.Type == typeCompleted || ev.Type == typeFailed || ev.Type == typeCancelled {
						return
					}
				}
			}()

			since := time.Now()
			body := fmt.Sprintf(`{"spec_version":1,"id":%q,"kind":"backup","disk":%q,"source":{"uri":%q},`+
				`"options":{"rate_limit":"4MiB","chunk_size":1048576,"compression":"zstd"},"labels":{"vm":"42"}}`, id, disk, uri)
			e.submit("backup", id, body)
			// The same job again: JetStream drops it by its Nats-Msg-Id.
			if ack, err := e.publish("backup", id, []byte(body)); err != nil || !ack.Duplicate {
				t.Errorf("re-submitted job: ack %+v, error %v; want a duplicate", ack, err)
			}

			var followed []cloudEvent
			select {
			case followed = <-live:
			case <-time.After(60 * time.Second):
				t.Fatal("no terminal event in 60s")
			}
			evs := e.waitEnd(id, 10*time.Second)
			if len(followed) != len(evs) {
				t.Errorf("monitor saw %v, the stream holds %v", followed, evs)
			}
			checkEnvelope(t, evs, id, "backup", disk, workerName, 1, since)
			done := checkLifecycle(t, evs, 1)
			for _, ev := range evs {
				if ev.Data.Labels["vm"] != "42" {
					t.Errorf("%v: labels %v", ev, ev.Data.Labels)
				}
				if !ev.dataField("worker") {
					t.Errorf("%v: no data.worker", ev)
				}
			}
			var lastDone int64
			for _, ev := range ofType(evs, typeProgress) {
				if ev.Data.BytesTotal != size || ev.Data.BytesDone < lastDone || ev.Data.BytesDone > size {
					t.Errorf("%v: bytes %d of %d (previous %d)", ev, ev.Data.BytesDone, ev.Data.BytesTotal, lastDone)
				}
				lastDone = ev.Data.BytesDone
			}
			backupID := done.Data.Backup
			if backupID == "" || done.Data.Stats == nil {
				t.Fatalf("completed event without backup and stats: %s", done.raw)
			}
			if statInt(t, done, "bytes_total") != size || statInt(t, done, "chunks_total") != 16 || statInt(t, done, "bytes_read") == 0 {
				t.Errorf("completed stats: %v", done.Data.Stats)
			}

			// The status bucket has the outcome.
			st := e.status(id)
			if st.State != worker.StateCompleted || st.Backup != backupID || st.Attempt != 1 || st.Worker != workerName || st.Kind != "backup" {
				t.Errorf("status after completion: %+v; want completed, backup %s, attempt 1 on %s", st, backupID, workerName)
			}
			ms := e.backups()
			if len(ms) != 1 || ms[0].ID != backupID || ms[0].JobID != id || ms[0].Disk != disk {
				t.Fatalf("repository holds %d backups, want %s of job %s", len(ms), backupID, id)
			}

			rid := "restore-" + mode
			since = time.Now()
			e.restoreAndCheck(rid, backupID, want)
			revs := mustRead(e, rid)
			checkEnvelope(t, revs, rid, "restore", "", workerName, 1, since)
			if revs[0].Type != typeStarted {
				t.Errorf("restore events: %v", revs)
			}
			if st := e.status(rid); st.State != worker.StateCompleted || st.Backup != backupID {
				t.Errorf("restore status: %+v", st)
			}
			e.waitDrained()
		})
	}
}

// TestTwoWorkersShareJobs runs six jobs on two workers of one stream: each job runs
// once, on one worker, and ends once.
func TestTwoWorkersShareJobs(t *testing.T) {
	e := newProcessEnv(t)
	e.startWorker("w1")
	e.startWorker("w2")
	uri, _ := randomDisk(t, filepath.Join(e.dir, "disk.raw"), 4*mib, 2)
	const n = 6
	for i := range n {
		id := fmt.Sprintf("share-%d", i)
		// About a second each: 2 MiB burst, then 2 MiB/s.
		e.submit("backup", id, backupJob(id, fmt.Sprintf("vm-2/disk%d", i), uri, `{"rate_limit":"2MiB","chunk_size":1048576}`))
	}
	perWorker := map[string]int{}
	for i := range n {
		id := fmt.Sprintf("share-%d", i)
		evs := e.waitEnd(id, 60*time.Second)
		started := only(t, evs, typeStarted)
		done := terminalOnly(t, evs, typeCompleted)
		if started.Data.Attempt != 1 || done.Data.Attempt != 1 || started.Data.Worker != done.Data.Worker {
			t.Errorf("job %s: %v", id, evs)
		}
		if r := ofType(evs, typeRetrying); len(r) > 0 {
			t.Errorf("job %s retried: %v", id, evs)
		}
		perWorker[done.Data.Worker]++
	}
	if perWorker["w1"] == 0 || perWorker["w2"] == 0 || perWorker["w1"]+perWorker["w2"] != n {
		t.Errorf("jobs per worker: %v; want both workers busy", perWorker)
	}
	t.Logf("jobs per worker: %v", perWorker)
	ci := e.waitDrained()
	if ci.NumRedelivered != 0 {
		t.Errorf("%d jobs were redelivered", ci.NumRedelivered)
	}
	jobsSeen := map[string]bool{}
	for _, m := range e.backups() {
		if jobsSeen[m.JobID] {
			t.Errorf("job %s made two backups", m.JobID)
		}
		jobsSeen[m.JobID] = true
	}
	if len(jobsSeen) != n {
		t.Errorf("%d backups in the repository, want %d", len(jobsSeen), n)
	}
}

// TestWorkerKilledMidBackup kills a worker process with SIGKILL in the middle of a
// backup: the job is redelivered to another worker, resumes from the checkpoint,
// completes once and restores bit for bit.
func TestWorkerKilledMidBackup(t *testing.T) {
	e := newProcessEnv(t)
	uri, want := randomDisk(t, filepath.Join(e.dir, "disk.raw"), 32*mib, 3)
	a := e.startWorkerProc("wa", "--ack-wait", "2s")
	id := "killed-1"
	e.submit("backup", id, backupJob(id, "vm-3/vda", uri, slowJob))

	// Kill once the first attempt recorded a checkpoint (every 5s), so that the
	// second one has something to resume.
	checkpointed := e.waitCheckpoint(id)
	a.signal(syscall.SIGKILL)
	if code := a.wait(10 * time.Second); code != -1 {
		t.Fatalf("worker wa exited with %d, want killed", code)
	}
	if evs := mustRead(e, id); len(ofType(evs, typeCompleted, typeFailed, typeCancelled)) > 0 {
		t.Fatalf("job ended before the kill: %v", evs)
	}
	t.Logf("killed wa after a checkpoint of %d chunks", checkpointed)

	e.startWorkerProc("wb", "--ack-wait", "2s")
	evs := e.waitEnd(id, 60*time.Second)
	done := terminalOnly(t, evs, typeCompleted)
	if done.Data.Attempt != 2 || done.Data.Worker != "wb" {
		t.Errorf("completed %v, want attempt 2 on wb", done)
	}
	var attempts []string
	for _, ev := range ofType(evs, typeStarted) {
		attempts = append(attempts, ev.String())
	}
	if !slices.Equal(attempts, []string{"started#1@wa", "started#2@wb"}) {
		t.Errorf("started events %v, want attempt 1 on wa then attempt 2 on wb", attempts)
	}
	if r := statInt(t, done, "chunks_resumed"); r < int64(checkpointed) {
		t.Errorf("second attempt resumed %d chunks, the checkpoint had %d: %v", r, checkpointed, done.Data.Stats)
	}
	if read := statInt(t, done, "bytes_read"); read >= 32*mib {
		t.Errorf("second attempt read %d bytes: nothing was resumed", read)
	}
	t.Logf("second attempt: %v", done.Data.Stats)
	if ms := e.backups(); len(ms) != 1 || ms[0].ID != done.Data.Backup {
		t.Fatalf("repository holds %d backups, want only %s", len(ms), done.Data.Backup)
	}
	e.restoreAndCheck("killed-1-restore", done.Data.Backup, want)
	e.waitDrained()
}

func mustRead(e *env, id string) []cloudEvent {
	evs, err := e.readEvents(id)
	if err != nil {
		e.t.Fatal(err)
	}
	return evs
}

// TestNATSRestartMidJob restarts the nats-server process (same port, same store)
// while a worker process runs a job: the job completes, once, and the worker still
// serves cancellations afterwards.
func TestNATSRestartMidJob(t *testing.T) {
	e := newProcessEnv(t)
	uri, want := randomDisk(t, filepath.Join(e.dir, "disk.raw"), 32*mib, 4)
	e.startWorkerProc("wr", "--ack-wait", "5s")
	id := "restart-1"
	e.submit("backup", id, backupJob(id, "vm-4/vda", uri, slowJob))
	e.waitProgress(id, 30*time.Second)
	began := time.Now()
	e.nats.Stop()
	time.Sleep(2 * time.Second) // the worker's heartbeats and events hit a closed port
	e.nats.Start()
	t.Logf("nats-server down for %s", time.Since(began).Round(time.Millisecond))

	evs := e.waitEnd(id, 60*time.Second)
	done := terminalOnly(t, evs, typeCompleted)
	if done.Data.Worker != "wr" {
		t.Errorf("completed by %q", done.Data.Worker)
	}
	t.Logf("events: %v", evs)
	ms := e.backups()
	if len(ms) != 1 || ms[0].ID != done.Data.Backup {
		t.Fatalf("repository holds %d backups, want only %s", len(ms), done.Data.Backup)
	}
	if st := e.status(id); st.State != worker.StateCompleted || st.Backup != done.Data.Backup {
		t.Errorf("status: %+v", st)
	}
	e.restoreAndCheck("restart-1-restore", done.Data.Backup, want)

	// The worker still watches the cancel bucket after the restart.
	id = "restart-2"
	e.submit("backup", id, backupJob(id, "vm-4/vdb", uri, slowJob))
	e.waitProgress(id, 30*time.Second)
	ctx, cancel := ctxTimeout(10 * time.Second)
	defer cancel()
	asked := time.Now()
	if err := e.client().Cancel(ctx, id); err != nil {
		t.Fatal(err)
	}
	ended := terminalOnly(t, e.waitEnd(id, 30*time.Second), typeCancelled)
	t.Logf("cancelled %s after the request", ended.Time.Sub(asked))
	e.waitDrained()
}

// TestCancelJobs cancels a queued job (the worker is busy) and a running one.
func TestCancelJobs(t *testing.T) {
	e := newProcessEnv(t)
	e.startWorker("wc", worker.WithJobs(1))
	uri, _ := randomDisk(t, filepath.Join(e.dir, "disk.raw"), 32*mib, 5)
	running, queued := "cancel-running", "cancel-queued"
	e.submit("backup", running, backupJob(running, "vm-5/vda", uri, slowJob))
	e.waitProgress(running, 30*time.Second)
	e.submit("backup", queued, backupJob(queued, "vm-5/vdb", uri, slowJob))

	// The queued one through blockferry's client, the running one by putting its
	// key into the cancel bucket as any NATS client can.
	ctx, cancel := ctxTimeout(10 * time.Second)
	defer cancel()
	if err := e.client().Cancel(ctx, queued); err != nil {
		t.Fatal(err)
	}
	kv, err := e.js.KeyValue(ctx, cancelBucket)
	if err != nil {
		t.Fatal(err)
	}
	asked := time.Now()
	if _, err := kv.Put(ctx, running, []byte("test")); err != nil {
		t.Fatal(err)
	}

	evs := e.waitEnd(running, 30*time.Second)
	ended := terminalOnly(t, evs, typeCancelled)
	t.Logf("running job cancelled %s after the request", ended.Time.Sub(asked).Round(time.Millisecond))
	if only(t, evs, typeStarted).Data.Attempt != 1 {
		t.Errorf("events: %v", evs)
	}
	evs = e.waitEnd(queued, 30*time.Second)
	terminalOnly(t, evs, typeCancelled)
	if len(evs) != 1 {
		t.Errorf("a job cancelled while queued must not start: %v", evs)
	}
	for _, id := range []string{running, queued} {
		if st := e.status(id); st.State != worker.StateCancelled {
			t.Errorf("status of %s: %+v, want cancelled", id, st)
		}
	}
	if ms := e.backups(); len(ms) != 0 {
		t.Errorf("cancelled jobs left %d manifests, first of job %s", len(ms), ms[0].JobID)
	}
	if repo := e.openRepo(); repo != nil {
		if cp, err := repo.LoadCheckpoint(ctx, running); err != nil || cp != nil {
			t.Errorf("a cancelled backup keeps its checkpoint: %+v, %v", cp, err)
		}
	}
	e.waitDrained()
}

// TestInvalidJobs publishes jobs that must be rejected: each is terminated, gets
// one failed event with code invalid_job when its id can be read and none when it
// cannot, and the worker goes on serving.
func TestInvalidJobs(t *testing.T) {
	e := newEmbeddedEnv(t)
	e.startWorker("wi")
	e.waitProvisioned()
	long := strings.Repeat("x", 200)
	cases := []struct {
		name, kind, body string
		id               string // reported in a failed event; "" for none
	}{
		{"truncated JSON", "backup", `{"spec_version":1,"id":"bad-syntax","kind":"backup","disk":"vm/d","sou`, ""},
		{"not JSON", "backup", `backup vm/d please`, ""},
		{"wrong field type", "backup", `{"spec_version":"1","id":"bad-types","kind":"backup","disk":"vm/d","source":{"uri":"file:///x"}}`, "bad-types"},
		{"unknown kind", "defrag", `{"spec_version":1,"id":"bad-kind","kind":"defrag","disk":"vm/d"}`, "bad-kind"},
		{"unknown field", "backup", `{"spec_version":1,"id":"bad-field","kind":"backup","disk":"vm/d","source":{"uri":"file:///x"},"compress":true}`, "bad-field"},
		{"missing source", "backup", `{"spec_version":1,"id":"bad-nosource","kind":"backup","disk":"vm/d"}`, "bad-nosource"},
		{"unsupported spec_version", "backup", `{"spec_version":2,"id":"bad-version","kind":"backup","disk":"vm/d","source":{"uri":"file:///x"}}`, "bad-version"},
		{"kind not its subject", "restore", backupJob("bad-subject", "vm/d", "file:///x", ""), "bad-subject"},
		{"over-long id", "backup", backupJob(long, "vm/d", "file:///x", ""), ""},
		{"over-long id, trailing data", "backup", backupJob(long, "vm/d", "file:///x", "") + ` {}`, ""},
		{"wildcard id, trailing data", "backup", `{"spec_version":1,"id":"bad.>","kind":"backup"} x`, ""},
	}
	for i, c := range cases {
		if ack, err := e.publish(c.kind, fmt.Sprintf("invalid-%d", i), []byte(c.body)); err != nil || ack.Duplicate {
			t.Fatalf("%s: publish: %+v, %v", c.name, ack, err)
		}
	}
	// Over the stream's 64 KiB limit: JetStream refuses it at publish time.
	huge := backupJob("bad-huge", "vm/d", "file:///x", `{"compression":"zstd"`+strings.Repeat(" ", 65<<10)+`}`)
	ack, hugeErr := e.publish("backup", "bad-huge", []byte(huge))
	if hugeErr == nil {
		t.Errorf("a %d-byte job was accepted by the stream (ack %+v)", len(huge), ack)
		cases = append(cases, struct{ name, kind, body, id string }{"oversized", "backup", huge, "bad-huge"})
	} else {
		t.Logf("%d-byte job refused: %v", len(huge), hugeErr)
	}

	// A valid job after them completes: the worker still serves. One job at a
	// time in stream order, so all the invalid ones were handled before it.
	uri, want := randomDisk(t, filepath.Join(e.dir, "disk.raw"), 2*mib, 6)
	e.submit("backup", "valid-after", backupJob("valid-after", "vm-6/vda", uri, ""))
	done := terminalOnly(t, e.waitEnd("valid-after", 30*time.Second), typeCompleted)

	expected := map[string]bool{eventsSubject + "valid-after": true}
	for _, c := range cases {
		if c.id == "" {
			continue
		}
		expected[eventsSubject+c.id] = true
		evs := mustRead(e, c.id)
		f := terminalOnly(t, evs, typeFailed)
		if len(evs) != 1 || f.Data.Error == nil || f.Data.Error.Code != "invalid_job" || f.Data.Error.Retryable || f.Data.Error.Message == "" {
			t.Errorf("%s: want one failed event with a non-retryable invalid_job error: %v", c.name, evs)
		}
		if f.Data.Attempt != 1 || f.Data.Worker != "wi" || f.Subject != c.id {
			t.Errorf("%s: failed event %s", c.name, f.raw)
		}
		if st := e.status(c.id); st.State != worker.StateFailed || st.Error == nil || st.Error.Code != "invalid_job" {
			t.Errorf("%s: status %+v", c.name, st)
		}
	}
	// No event names a job whose id could not be read (or was invalid).
	ctx, cancel := ctxTimeout(10 * time.Second)
	defer cancel()
	s, err := e.js.Stream(ctx, eventsStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(eventsSubject+">"))
	if err != nil {
		t.Fatal(err)
	}
	for subj := range info.State.Subjects {
		if !expected[subj] {
			t.Errorf("unexpected events on %s", subj)
		}
	}
	// Every invalid job was terminated, none redelivered.
	ci := e.waitDrained()
	if ci.NumRedelivered != 0 || ci.Delivered.Consumer != uint64(len(cases)+1) {
		t.Errorf("consumer delivered %d messages (%d redelivered), want %d once each", ci.Delivered.Consumer, ci.NumRedelivered, len(cases)+1)
	}
	// Work-queue retention: acknowledged and terminated jobs leave the stream.
	js, err := e.js.Stream(ctx, jobsStream)
	if err != nil {
		t.Fatal(err)
	}
	if jinfo, err := js.Info(ctx); err != nil || jinfo.State.Msgs != 0 {
		t.Errorf("jobs stream after every job ended: %+v, %v; want it empty", jinfo.State, err)
	}
	e.restoreAndCheck("valid-after-restore", done.Data.Backup, want)
}

// TestSIGTERM stops worker processes with SIGTERM while they run a job: with a
// long grace period the job finishes and the worker exits 0 without taking another;
// with a short one the worker exits 0 and hands the job back, and another worker
// completes it.
func TestSIGTERM(t *testing.T) { sigterm(t, newProcessEnv(t)) }

// TestClusterSIGTERM is TestSIGTERM on the 3-node cluster with R3 streams.
func TestClusterSIGTERM(t *testing.T) { sigterm(t, newClusterEnv(t)) }

func sigterm(t *testing.T, e *env) {
	uri1, _ := randomDisk(t, filepath.Join(e.dir, "disk1.raw"), 16*mib, 71)
	uri2, want2 := randomDisk(t, filepath.Join(e.dir, "disk2.raw"), 32*mib, 72)
	first, second := "term-finish", "term-handback"

	// An idle worker told to stop takes no job published a moment later, and
	// exits at once.
	w0 := e.startWorkerProc("wt0", "--jobs", "1")
	e.waitProvisioned()
	w0.signal(syscall.SIGTERM)
	stopped := time.Now()
	time.Sleep(300 * time.Millisecond)
	e.submit("backup", first, backupJob(first, "vm-7/vda", uri1, slowJob))
	if code := w0.wait(30 * time.Second); code != 0 {
		t.Fatalf("idle wt0 exited with %d after SIGTERM, want 0", code)
	}
	if d := time.Since(stopped); d > 2500*time.Millisecond {
		t.Errorf("idle wt0 took %s to stop", d)
	}
	time.Sleep(300 * time.Millisecond)
	if evs := mustRead(e, first); len(evs) != 0 {
		t.Fatalf("a worker told to stop took a job: %v", evs)
	}

	w1 := e.startWorkerProc("wt1", "--jobs", "1", "--grace-period", "60s")
	e.waitProgress(first, 30*time.Second)
	e.submit("backup", second, backupJob(second, "vm-7/vdb", uri2, slowJob))
	w1.signal(syscall.SIGTERM)
	if code := w1.wait(60 * time.Second); code != 0 {
		t.Fatalf("wt1 exited with %d after SIGTERM, want 0", code)
	}
	// It finished the running job within its grace period...
	evs := mustRead(e, first)
	done := terminalOnly(t, evs, typeCompleted)
	if done.Data.Worker != "wt1" || done.Data.Attempt != 1 {
		t.Errorf("first job: %v", evs)
	}
	// ...and did not take the queued one.
	if evs := mustRead(e, second); len(evs) != 0 {
		t.Fatalf("a stopping worker took a job: %v", evs)
	}
	if ci, err := e.consumerInfo(); err != nil || ci.NumPending != 1 || ci.NumAckPending != 0 {
		t.Fatalf("queue after wt1 stopped: %+v, %v; want the second job pending", ci, err)
	}

	// The second worker takes the queued job; its grace period is shorter than
	// the job.
	w2 := e.startWorkerProc("wt2", "--jobs", "1", "--grace-period", "1s")
	e.waitProgress(second, 30*time.Second)
	stopped = time.Now()
	w2.signal(syscall.SIGTERM)
	if code := w2.wait(30 * time.Second); code != 0 {
		t.Fatalf("wt2 exited with %d after SIGTERM, want 0", code)
	}
	if d := time.Since(stopped); d > 10*time.Second {
		t.Errorf("wt2 took %s to stop with a 1s grace period", d)
	}
	evs = mustRead(e, second)
	if len(ofType(evs, typeCompleted, typeFailed, typeCancelled, typeRetrying)) != 0 {
		t.Fatalf("a job handed back must not end: %v", evs)
	}
	if st := e.status(second); st.State != worker.StateQueued {
		t.Errorf("status of the handed-back job: %+v, want queued", st)
	}

	e.startWorkerProc("wt3", "--jobs", "1")
	evs = e.waitEnd(second, 60*time.Second)
	done = terminalOnly(t, evs, typeCompleted)
	if done.Data.Worker != "wt3" || done.Data.Attempt != 2 {
		t.Errorf("handed-back job: %v", evs)
	}
	if r := statInt(t, done, "chunks_resumed"); r == 0 {
		t.Errorf("the handed-back job did not resume: %v", done.Data.Stats)
	}
	e.restoreAndCheck("term-handback-restore", done.Data.Backup, want2)
	e.waitDrained()
}

// TestDeliveriesExhausted: a job whose every attempt dies with its worker still
// ends in exactly one failed event, from a worker that hears JetStream's
// max-deliveries advisory, and leaves the queue.
func TestDeliveriesExhausted(t *testing.T) {
	e := newProcessEnv(t)
	uri, _ := randomDisk(t, filepath.Join(e.dir, "disk.raw"), 32*mib, 5)
	flags := []string{"--ack-wait", "2s", "--max-deliver", "2"}
	id := "doomed-1"
	for attempt, name := range []string{"wa", "wb"} {
		p := e.startWorkerProc(name, flags...)
		if attempt == 0 { // the first worker provisions the streams
			e.submit("backup", id, backupJob(id, "vm-5/vda", uri, slowJob))
		}
		e.waitEvents(id, 30*time.Second, func(evs []cloudEvent) bool { return len(ofType(evs, typeStarted)) > attempt })
		p.signal(syscall.SIGKILL)
		p.wait(10 * time.Second)
	}
	e.startWorkerProc("wc", flags...)
	evs := e.waitEnd(id, 30*time.Second)
	failed := terminalOnly(t, evs, typeFailed)
	if failed.Data.Error == nil || failed.Data.Error.Code != "deliveries_exhausted" || failed.Data.Error.Retryable {
		t.Errorf("failed event %+v, want code deliveries_exhausted", failed.Data.Error)
	}
	if n := len(ofType(evs, typeStarted)); n != 2 {
		t.Errorf("%d started events, want 2", n)
	}
	if st := e.status(id); st.State != worker.StateFailed {
		t.Errorf("status %+v, want failed", st)
	}
	e.waitDrained()
}

// TestFailedVerifyReport: a verify job that finds a corrupt chunk fails with
// verify_failed, and its failed event names the chunk.
func TestFailedVerifyReport(t *testing.T) {
	e := newEmbeddedEnv(t)
	e.startWorker("wv")
	e.waitProvisioned()
	uri, _ := randomDisk(t, filepath.Join(e.dir, "disk.raw"), 4*mib, 9)
	e.submit("backup", "vb-1", backupJob("vb-1", "vm-9/vda", uri, `{"chunk_size":1048576}`))
	backup := terminalOnly(t, e.waitEnd("vb-1", 30*time.Second), typeCompleted).Data.Backup

	chunks, err := filepath.Glob(filepath.Join(e.dir, "repository", "chunks", "*", "*"))
	if err != nil || len(chunks) == 0 {
		t.Fatalf("no chunks stored: %v", err)
	}
	data, err := os.ReadFile(chunks[0])
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 1
	if err := os.WriteFile(chunks[0], data, 0o600); err != nil {
		t.Fatal(err)
	}
	e.submit("verify", "vv-1", fmt.Sprintf(`{"spec_version":1,"id":"vv-1","kind":"verify","backup":%q}`, backup))
	failed := terminalOnly(t, e.waitEnd("vv-1", 30*time.Second), typeFailed)
	if failed.Data.Error == nil || failed.Data.Error.Code != "verify_failed" {
		t.Fatalf("failed event %+v, want verify_failed", failed.Data.Error)
	}
	corrupt, _ := failed.Data.Stats["corrupt"].([]any)
	if len(corrupt) != 1 || corrupt[0] != filepath.Base(chunks[0]) {
		t.Errorf("failed event stats %v, want corrupt [%s]", failed.Data.Stats, filepath.Base(chunks[0]))
	}
}
