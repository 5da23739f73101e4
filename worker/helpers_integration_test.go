package worker_test

// Test harness of the worker integration tests: NATS (embedded or a nats-server
// process), workers (in this process or as blockferry processes), jobs published
// and events read with plain nats.go/jetstream calls, as an orchestrator that does
// not use blockferry's Go client would.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	_ "github.com/blockferry/blockferry/backends/file"
	_ "github.com/blockferry/blockferry/backends/nbd"
	"github.com/blockferry/blockferry/internal/testutil"
	"github.com/blockferry/blockferry/jobs"
	"github.com/blockferry/blockferry/sinks"
	_ "github.com/blockferry/blockferry/sinks/file"
	"github.com/blockferry/blockferry/sinks/repository"
	"github.com/blockferry/blockferry/worker"
	"github.com/blockferry/blockferry/worker/embedded"
)

const mib = 1 << 20

// Subjects and names of the default topology, spelled out as an orchestrator
// written in another language would.
const (
	jobsSubject   = "blockferry.jobs."
	eventsSubject = "blockferry.events."
	jobsStream    = "BLOCKFERRY_JOBS"
	eventsStream  = "BLOCKFERRY_EVENTS"
	consumerName  = "workers"
	statusBucket  = "BLOCKFERRY_STATUS"
	cancelBucket  = "BLOCKFERRY_CANCEL"

	typeStarted   = "io.blockferry.job.started"
	typeProgress  = "io.blockferry.job.progress"
	typeRetrying  = "io.blockferry.job.retrying"
	typeCompleted = "io.blockferry.job.completed"
	typeFailed    = "io.blockferry.job.failed"
	typeCancelled = "io.blockferry.job.cancelled"
)

// slowJob makes a backup of a disk of a few tens of MiB take seconds: the rate
// limit's burst is one second's worth, chunks are 1 MiB so that a cancel or a
// shutdown interrupts within a fraction of a second.
const slowJob = `{"rate_limit":"4MiB","chunk_size":1048576,"concurrency":2}`

func integration(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: starts NATS, workers and qemu-nbd")
	}
}

// testTopology is the default topology with short timers, for in-process workers.
func testTopology() worker.Topology {
	tp := worker.DefaultTopology()
	tp.AckWait = 4 * time.Second
	tp.Backoff = []time.Duration{200 * time.Millisecond, 500 * time.Millisecond}
	tp.EventsMaxAge = time.Hour
	return tp
}

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// workerBinary builds cmd/blockferry once per test run.
func workerBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "blockferry-worker-test")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "blockferry")
		cmd := exec.Command("go", "build", "-o", binPath, "./cmd/blockferry")
		cmd.Dir = testutil.RepoRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

// env is one deployment under test: a NATS server, a file repository, and a plain
// NATS client of the test's own.
type env struct {
	t    *testing.T
	dir  string
	url  string
	nats *testutil.NATSServer // nil when the server is embedded or a cluster
	// cluster is the 3-node cluster the env runs on, with R3 streams and
	// buckets; nil on one server.
	cluster *testutil.NATSCluster
	nc      *nats.Conn
	js      jetstream.JetStream
	repo    string
	// runnerOpts are added to the runner of in-process workers (a policy).
	runnerOpts []jobs.RunnerOption
}

// newProcessEnv runs a nats-server process.
func newProcessEnv(t *testing.T) *env {
	t.Helper()
	integration(t)
	srv := testutil.StartNATS(t)
	e := &env{t: t, dir: t.TempDir(), url: srv.URL, nats: srv}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("nats-server output:\n%s", srv.Output())
		}
	})
	e.init()
	return e
}

// newClusterEnv runs a 3-node nats-server cluster; workers create R3 streams and
// buckets, and every client is given all three servers.
func newClusterEnv(t *testing.T) *env {
	t.Helper()
	integration(t)
	c := testutil.StartNATSCluster(t)
	e := &env{t: t, dir: t.TempDir(), url: c.URLs, cluster: c}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("nats-server cluster output:\n%s", c.Output())
		}
	})
	e.init()
	return e
}

// topology is testTopology with the env's replicas.
func (e *env) topology() worker.Topology {
	tp := testTopology()
	if e.cluster != nil {
		tp.Replicas = 3
	}
	return tp
}

// newEmbeddedEnv runs the embedded server a worker runs without --nats-url.
func newEmbeddedEnv(t *testing.T) *env {
	t.Helper()
	integration(t)
	e := &env{t: t, dir: t.TempDir()}
	dataDir := filepath.Join(e.dir, "embedded")
	srv, err := embedded.Start(dataDir, fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	token, err := embedded.ReadToken(embedded.TokenFile(dataDir))
	if err != nil {
		t.Fatal(err)
	}
	// The server requires its token; a URL's user information carries it.
	e.url = strings.Replace(srv.ClientURL(), "nats://", "nats://"+token+"@", 1)
	e.init()
	return e
}

func (e *env) init() {
	e.repo = "file://" + filepath.Join(e.dir, "repository")
	nc, err := nats.Connect(e.url, nats.Name("blockferry-test-client"), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(nc.Close)
	e.nc = nc
	if e.js, err = jetstream.New(nc, jetstream.WithDefaultTimeout(5*time.Second)); err != nil {
		e.t.Fatal(err)
	}
}

func ctxTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}

// waitProvisioned waits until a worker created the streams, consumer and buckets
// (the cancel bucket is created last).
func (e *env) waitProvisioned() {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := ctxTimeout(2 * time.Second)
		_, err := e.js.KeyValue(ctx, cancelBucket)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("no worker provisioned JetStream in 30s: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// publish sends a job document as any NATS client would: on
// blockferry.jobs.<kind>, with the job id as Nats-Msg-Id.
func (e *env) publish(kind, msgID string, body []byte) (*jetstream.PubAck, error) {
	msg := nats.NewMsg(jobsSubject + kind)
	msg.Data = body
	if msgID != "" {
		msg.Header.Set("Nats-Msg-Id", msgID)
	}
	ctx, cancel := ctxTimeout(10 * time.Second)
	defer cancel()
	return e.js.PublishMsg(ctx, msg)
}

// submit publishes a job that must be accepted as new.
func (e *env) submit(kind, id, body string) {
	e.t.Helper()
	if !json.Valid([]byte(body)) {
		e.t.Fatalf("test bug: job %s is not JSON: %s", id, body)
	}
	// A publish is retried through a failover (a cluster electing a stream
	// leader); a retry may find the first try stored after all.
	deadline := time.Now().Add(30 * time.Second)
	for retried := false; ; retried = true {
		ack, err := e.publish(kind, id, []byte(body))
		if err == nil {
			if (ack.Duplicate && !retried) || ack.Stream != jobsStream {
				e.t.Fatalf("publish job %s: ack %+v", id, ack)
			}
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("publish job %s: %v", id, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// backupJob is a full backup job document, written by hand.
func backupJob(id, disk, sourceURI, options string) string {
	s := fmt.Sprintf(`{"spec_version":1,"id":%q,"kind":"backup","disk":%q,"source":{"uri":%q}`, id, disk, sourceURI)
	if options != "" {
		s += `,"options":` + options
	}
	return s + "}"
}

// restoreJob is a restore job document into a raw file.
func restoreJob(id, backup, targetPath string) string {
	return fmt.Sprintf(`{"spec_version":1,"id":%q,"kind":"restore","backup":%q,"target":{"uri":%q}}`, id, backup, "file://"+targetPath)
}

// cloudEvent is an event as it is on the wire, decoded independently of the
// worker's own types.
type cloudEvent struct {
	SpecVersion     string    `json:"specversion"`
	ID              string    `json:"id"`
	Source          string    `json:"source"`
	Type            string    `json:"type"`
	Subject         string    `json:"subject"`
	Time            time.Time `json:"time"`
	DataContentType string    `json:"datacontenttype"`
	Data            struct {
		JobID      string            `json:"job_id"`
		Kind       string            `json:"kind"`
		Disk       string            `json:"disk"`
		Attempt    int               `json:"attempt"`
		Worker     string            `json:"worker"`
		Labels     map[string]string `json:"labels"`
		BytesTotal int64             `json:"bytes_total"`
		BytesDone  int64             `json:"bytes_done"`
		Export     string            `json:"export"`
		Backup     string            `json:"backup"`
		Stats      map[string]any    `json:"stats"`
		Error      *struct {
			Code      string `json:"code"`
			Message   string `json:"message"`
			Retryable bool   `json:"retryable"`
		} `json:"error"`
	} `json:"data"`
	raw     []byte
	subject string // NATS subject it was published on
}

func decodeEvent(subject string, data []byte) (cloudEvent, error) {
	var ev cloudEvent
	if err := json.Unmarshal(data, &ev); err != nil {
		return ev, fmt.Errorf("event on %s is not JSON: %v: %s", subject, err, data)
	}
	ev.raw, ev.subject = data, subject
	return ev, nil
}

func (ev cloudEvent) String() string {
	s := fmt.Sprintf("%s#%d@%s", strings.TrimPrefix(ev.Type, "io.blockferry.job."), ev.Data.Attempt, ev.Data.Worker)
	if ev.Data.Error != nil {
		s += "(" + ev.Data.Error.Code + ": " + ev.Data.Error.Message + ")"
	}
	return s
}

// dataField reports whether the event's data object has key (present even when
// zero).
func (ev cloudEvent) dataField(key string) bool {
	var v struct {
		Data map[string]json.RawMessage `json:"data"`
	}
	_ = json.Unmarshal(ev.raw, &v)
	_, ok := v.Data[key]
	return ok
}

// readEvents reads every stored event of a job from blockferry.events.<id>, in
// order, with plain stream reads (no consumer is left behind).
func (e *env) readEvents(id string) ([]cloudEvent, error) {
	ctx, cancel := ctxTimeout(5 * time.Second)
	defer cancel()
	s, err := e.js.Stream(ctx, eventsStream)
	if err != nil {
		return nil, err
	}
	var out []cloudEvent
	for seq := uint64(1); ; {
		m, err := s.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(eventsSubject+id))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		ev, err := decodeEvent(m.Subject, m.Data)
		if err != nil {
			return nil, err
		}
		out = append(out, ev)
		seq = m.Sequence + 1
	}
}

// waitEvents polls a job's events until done says they are complete, then waits a
// moment more and reads them again, so that an event wrongly published after the
// expected last one is seen too.
func (e *env) waitEvents(id string, timeout time.Duration, done func([]cloudEvent) bool) []cloudEvent {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	var (
		evs []cloudEvent
		err error
	)
	for {
		evs, err = e.readEvents(id)
		if err == nil && done(evs) {
			break
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("job %s: events incomplete after %s: %v (last read error: %v)", id, timeout, evs, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(700 * time.Millisecond)
	for {
		if evs, err = e.readEvents(id); err == nil {
			return evs
		}
		if time.Now().After(deadline.Add(10 * time.Second)) {
			e.t.Fatalf("job %s: reading events: %v", id, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitEnd waits for a job's terminal event and returns all its events.
func (e *env) waitEnd(id string, timeout time.Duration) []cloudEvent {
	e.t.Helper()
	return e.waitEvents(id, timeout, func(evs []cloudEvent) bool { return len(ofType(evs, typeCompleted, typeFailed, typeCancelled)) > 0 })
}

// waitStarted waits until a job has a started event (of any attempt) and a
// progress event after it: its backup is well under way.
func (e *env) waitProgress(id string, timeout time.Duration) []cloudEvent {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		evs, err := e.readEvents(id)
		if err == nil && len(evs) > 0 && evs[len(evs)-1].Type == typeProgress {
			return evs
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("job %s: no progress after %s: %v (last read error: %v)", id, timeout, evs, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func ofType(evs []cloudEvent, types ...string) []cloudEvent {
	var out []cloudEvent
	for _, ev := range evs {
		for _, typ := range types {
			if ev.Type == typ {
				out = append(out, ev)
			}
		}
	}
	return out
}

// only returns the one event of a type, failing unless there is exactly one.
func only(t *testing.T, evs []cloudEvent, typ string) cloudEvent {
	t.Helper()
	got := ofType(evs, typ)
	if len(got) != 1 {
		t.Fatalf("want exactly one %s event, got %d: %v", typ, len(got), evs)
	}
	return got[0]
}

// terminalOnly checks that a job ended exactly once, with an event of type typ,
// and returns that event.
func terminalOnly(t *testing.T, evs []cloudEvent, typ string) cloudEvent {
	t.Helper()
	term := ofType(evs, typeCompleted, typeFailed, typeCancelled)
	if len(term) != 1 || term[0].Type != typ {
		t.Fatalf("want exactly one terminal event, %s; got %v", typ, evs)
	}
	if evs[len(evs)-1].Type != typ {
		t.Fatalf("events after the terminal one: %v", evs)
	}
	return term[0]
}

// statInt reads an integer statistic of a completed event.
func statInt(t *testing.T, ev cloudEvent, key string) int64 {
	t.Helper()
	v, ok := ev.Data.Stats[key].(float64)
	if !ok && ev.Data.Stats[key] != nil {
		t.Fatalf("stats.%s is %T, not a number: %s", key, ev.Data.Stats[key], ev.raw)
	}
	return int64(v)
}

// consumerInfo is the state of the workers' consumer.
func (e *env) consumerInfo() (*jetstream.ConsumerInfo, error) {
	ctx, cancel := ctxTimeout(5 * time.Second)
	defer cancel()
	c, err := e.js.Consumer(ctx, jobsStream, consumerName)
	if err != nil {
		return nil, err
	}
	return c.Info(ctx)
}

// waitDrained waits until the consumer has no job left: none pending delivery,
// none delivered and not yet acknowledged or terminated.
func (e *env) waitDrained() *jetstream.ConsumerInfo {
	e.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		ci, err := e.consumerInfo()
		if err == nil && ci.NumPending == 0 && ci.NumAckPending == 0 {
			return ci
		}
		if time.Now().After(deadline) {
			if ci != nil {
				e.t.Fatalf("jobs left in the queue: pending %d, ack pending %d, redelivered %d", ci.NumPending, ci.NumAckPending, ci.NumRedelivered)
			}
			e.t.Fatalf("consumer info: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// client is blockferry's own Go client, for status and cancel.
func (e *env) client() *worker.Client { return worker.NewClient(e.js, worker.DefaultTopology()) }

func (e *env) status(id string) worker.JobStatus {
	e.t.Helper()
	ctx, cancel := ctxTimeout(5 * time.Second)
	defer cancel()
	st, err := e.client().Status(ctx, id)
	if err != nil {
		e.t.Fatalf("status of %s: %v", id, err)
	}
	return st
}

// openRepo opens the repository; nil when none was created yet.
func (e *env) openRepo() *repository.Repository {
	e.t.Helper()
	ctx, cancel := ctxTimeout(10 * time.Second)
	defer cancel()
	store, err := sinks.OpenStore(ctx, e.repo)
	if err != nil {
		e.t.Fatal(err)
	}
	repo, err := repository.Open(ctx, store, nil)
	if errors.Is(err, sinks.ErrNoRepository) {
		return nil
	}
	if err != nil {
		e.t.Fatal(err)
	}
	return repo
}

// backups lists the manifests in the repository.
func (e *env) backups() []*repository.Manifest {
	e.t.Helper()
	repo := e.openRepo()
	if repo == nil {
		return nil
	}
	ctx, cancel := ctxTimeout(10 * time.Second)
	defer cancel()
	ms, _, err := repo.ListBackups(ctx, "")
	if err != nil {
		e.t.Fatal(err)
	}
	return ms
}

// restoreAndCheck restores a backup with a restore job and compares the result
// with the sha256 of the source.
func (e *env) restoreAndCheck(jobID, backup, wantSHA string) {
	e.t.Helper()
	target := filepath.Join(e.dir, jobID+".raw")
	e.submit("restore", jobID, restoreJob(jobID, backup, target))
	evs := e.waitEnd(jobID, 60*time.Second)
	done := terminalOnly(e.t, evs, typeCompleted)
	if done.Data.Kind != "restore" || done.Data.Backup != backup {
		e.t.Errorf("restore completed event: kind %q backup %q, want restore of %s", done.Data.Kind, done.Data.Backup, backup)
	}
	if got := testutil.SHA256File(e.t, target); got != wantSHA {
		e.t.Fatalf("restored image differs from the source: sha256 %s, want %s", got, wantSHA)
	}
}

// waitCheckpoint waits until a running backup recorded a checkpoint (every 5s)
// and returns the number of chunks it holds.
func (e *env) waitCheckpoint(id string) int {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if repo := e.openRepo(); repo != nil {
			ctx, cancel := ctxTimeout(5 * time.Second)
			cp, err := repo.LoadCheckpoint(ctx, id)
			cancel()
			if err == nil && cp != nil && len(cp.Done) > 0 {
				return len(cp.Done)
			}
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("no checkpoint of job %s after 30s: %v", id, mustRead(e, id))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// randomDisk writes a raw image of size bytes of pseudo-random data (no two
// chunks alike) and returns its file:// URI and sha256.
func randomDisk(t *testing.T, path string, size int64, seed uint64) (string, string) {
	t.Helper()
	buf := make([]byte, size)
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), 42})
	_, _ = r.Read(buf)
	if err := os.WriteFile(path, buf, 0o600); err != nil {
		t.Fatal(err)
	}
	return "file://" + path, testutil.SHA256File(t, path)
}

// inproc is a worker running in this process with its own NATS connection.
type inproc struct {
	name   string
	w      *worker.Worker
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
	err    error
}

// startWorker runs a worker in this process (worker.New + Run) on its own
// connection, and waits until it takes jobs. It is stopped when the test ends.
func (e *env) startWorker(name string, opts ...worker.Option) *inproc {
	e.t.Helper()
	nc, err := worker.Connect(worker.ConnectOptions{URLs: e.url, Name: "blockferry-worker-" + name})
	if err != nil {
		e.t.Fatal(err)
	}
	js, err := jetstream.New(nc, jetstream.WithDefaultTimeout(10*time.Second))
	if err != nil {
		e.t.Fatal(err)
	}
	log := zaptest.NewLogger(e.t, zaptest.Level(zap.InfoLevel)).With(zap.String("test_worker", name))
	runner := jobs.NewRunner(append([]jobs.RunnerOption{jobs.WithDefaultRepository(e.repo), jobs.WithConcurrency(2), jobs.WithLogger(log), jobs.WithResume()}, e.runnerOpts...)...)
	all := append([]worker.Option{worker.WithTopology(e.topology()), worker.WithName(name),
		worker.WithGracePeriod(10 * time.Second), worker.WithLogger(log)}, opts...)
	w, err := worker.New(js, runner, all...)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &inproc{name: name, w: w, cancel: cancel, done: make(chan error, 1)}
	go func() { p.done <- p.w.Run(ctx) }()
	e.t.Cleanup(func() {
		if err := p.stop(); err != nil {
			e.t.Errorf("worker %s: %v", name, err)
		}
		nc.Close()
	})
	deadline := time.Now().Add(30 * time.Second)
	for !p.w.Ready() {
		select {
		case err := <-p.done:
			e.t.Fatalf("worker %s stopped: %v", name, err)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("worker %s not ready in 30s", name)
		}
	}
	return p
}

// stop ends Run and waits for it.
func (p *inproc) stop() error {
	p.once.Do(func() {
		p.cancel()
		select {
		case p.err = <-p.done:
		case <-time.After(60 * time.Second):
			p.err = errors.New("Run did not return within 60s of its context ending")
		}
	})
	return p.err
}

// proc is a `blockferry worker` process.
type proc struct {
	t       *testing.T
	name    string
	cmd     *exec.Cmd
	logPath string
	exited  chan struct{}
}

// startWorkerProc runs `blockferry worker` against the env's NATS and repository
// with extra flags, and waits until it takes jobs. Whatever is left running when
// the test ends is killed.
func (e *env) startWorkerProc(name string, args ...string) *proc {
	e.t.Helper()
	p := e.launchWorkerProc(name, args...)
	p.waitStarted()
	return p
}

// launchWorkerProc is startWorkerProc without the wait.
func (e *env) launchWorkerProc(name string, args ...string) *proc {
	e.t.Helper()
	bin := workerBinary(e.t)
	p := &proc{t: e.t, name: name, logPath: filepath.Join(e.dir, "worker-"+name+".log"), exited: make(chan struct{})}
	logFile, err := os.Create(p.logPath)
	if err != nil {
		e.t.Fatal(err)
	}
	all := append([]string{"worker", "--nats-url", e.url, "--data-dir", filepath.Join(e.dir, "data-"+name),
		"--repository", e.repo, "--name", name, "--concurrency", "2", "--log-level", "info",
		"--allow-source", "file://" + e.dir + "/**", "--allow-source", "nbd+unix:///*?socket=" + filepath.Dir(e.dir) + "/**", // the test's temporary directories
		"--allow-target", "file://" + e.dir + "/**"}, args...)
	if e.cluster != nil {
		all = append(all, "--replicas", "3")
	}
	p.cmd = exec.Command(bin, all...)
	p.cmd.Env = testutil.CleanEnv()
	p.cmd.Stdout, p.cmd.Stderr = logFile, logFile
	if err := p.cmd.Start(); err != nil {
		logFile.Close()
		e.t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); logFile.Close(); close(p.exited) }()
	e.t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
		if e.t.Failed() {
			log, _ := os.ReadFile(p.logPath)
			e.t.Logf("log of worker %s:\n%s", name, log)
		}
	})
	return p
}

// waitStarted waits until the worker logged that it takes jobs.
func (p *proc) waitStarted() {
	p.t.Helper()
	p.waitLogged("worker started", 30*time.Second)
}

// waitLogged waits until the worker logged msg, failing the test if it exits
// or the timeout passes first.
func (p *proc) waitLogged(msg string, timeout time.Duration) {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	for !p.logged(msg) {
		select {
		case <-p.exited:
			log, _ := os.ReadFile(p.logPath)
			p.t.Fatalf("worker %s exited before it logged %q (%v):\n%s", p.name, msg, p.cmd.ProcessState, log)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("worker %s did not log %q in %v", p.name, msg, timeout)
		}
	}
}

// logged reports whether the process logged a line with message msg.
func (p *proc) logged(msg string) bool {
	data, err := os.ReadFile(p.logPath)
	if err != nil {
		return false
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var line struct {
			Msg string `json:"msg"`
		}
		if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == msg {
			return true
		}
	}
	return false
}

func (p *proc) signal(sig syscall.Signal) {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatalf("signal %v to worker %s: %v", sig, p.name, err)
	}
}

// wait waits for the process to exit and returns its exit code (-1: killed by a
// signal).
func (p *proc) wait(timeout time.Duration) int {
	p.t.Helper()
	select {
	case <-p.exited:
		return p.cmd.ProcessState.ExitCode()
	case <-time.After(timeout):
		p.t.Fatalf("worker %s did not exit within %s", p.name, timeout)
		return 0
	}
}
