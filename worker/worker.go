package worker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/blockferry/blockferry/jobs"
)

// Causes of a job's context being cancelled.
var (
	errCancelled = jobs.ErrCancelled
	errShutdown  = errors.New("worker shutting down")
	// errLostDelivery: JetStream has handed the job to another attempt (no
	// heartbeat for longer than the ack wait, or the job's status names a newer
	// attempt or message); this attempt stops without a word.
	errLostDelivery = errors.New("delivery lost to another attempt")
)

// CodeDuplicateJob is the error code of the failed event that answers a job
// message whose id an earlier job message already used.
const CodeDuplicateJob = "duplicate_job"

// progressInterval is how often a running job publishes a progress event.
const progressInterval = time.Second

// Worker pulls jobs from JetStream and runs them.
type Worker struct {
	js      jetstream.JetStream
	runner  *jobs.Runner
	cfg     config
	events  *publisher
	status  statusStore
	cancels jetstream.KeyValue

	mu sync.Mutex
	// running holds the delivery of each job this worker runs; a job delivered
	// twice (heartbeats lost) is replaced by its later delivery.
	running  map[string]*delivery
	ready    bool
	fetchErr error // of the last fetch; nil when it worked
}

// New makes a worker; Run starts it. It fails when an option is given a value
// that cannot work.
func New(js jetstream.JetStream, runner *jobs.Runner, opts ...Option) (*Worker, error) {
	c := defaultConfig()
	for _, o := range opts {
		if err := o(&c); err != nil {
			return nil, fmt.Errorf("worker: %w", err)
		}
	}
	c.heartbeat = heartbeatInterval(c.topo.AckWait)
	return &Worker{
		js: js, runner: runner, cfg: c, running: map[string]*delivery{},
		events: &publisher{js: js, topo: c.topo, source: "blockferry/worker/" + c.name},
	}, nil
}

// Ready reports whether the worker is taking jobs: it runs, and its last fetch
// of a job worked (a fetch that found none works).
func (w *Worker) Ready() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.ready && w.fetchErr == nil
}

// setFetchErr records how the last fetch of a job went.
func (w *Worker) setFetchErr(err error) {
	w.mu.Lock()
	w.fetchErr = err
	w.mu.Unlock()
}

func (w *Worker) setReady(v bool) {
	w.mu.Lock()
	w.ready = v
	w.mu.Unlock()
}

// Run takes jobs until ctx is done, then stops taking jobs, gives running ones the
// grace period to finish, hands back those that did not, and returns.
func (w *Worker) Run(ctx context.Context) error {
	cons, err := w.open(ctx)
	if err != nil {
		return err
	}
	// Jobs outlive ctx by the grace period; jobsCtx ends them after it.
	jobsCtx, stopJobs := context.WithCancelCause(context.Background())
	defer stopJobs(errShutdown)
	go w.watchCancellations(jobsCtx)

	stopWatching, err := w.watchExhausted(jobsCtx, w.js.Conn())
	if err != nil {
		return err
	}
	defer stopWatching()

	w.setReady(true)
	w.cfg.log.Info("worker started", zap.String("worker", w.cfg.name), zap.Int("jobs", w.cfg.slots))
	running := w.pull(ctx, jobsCtx, cons)
	w.setReady(false)
	w.drain(running, stopJobs)
	return nil
}

// open provisions the streams and buckets, opens the buckets and the consumer,
// and takes the consumer's settings.
func (w *Worker) open(ctx context.Context) (jetstream.Consumer, error) {
	t := w.cfg.topo
	if err := w.provision(ctx); err != nil {
		return nil, fmt.Errorf("provision: %w", err)
	}
	kv, err := w.js.KeyValue(ctx, t.StatusBucket)
	if err != nil {
		return nil, fmt.Errorf("status bucket %s: %w", t.StatusBucket, err)
	}
	w.status = statusStore{kv: kv}
	if w.cancels, err = w.js.KeyValue(ctx, t.CancelBucket); err != nil {
		return nil, fmt.Errorf("cancel bucket %s: %w", t.CancelBucket, err)
	}
	cons, err := w.js.Consumer(ctx, t.JobsStream, t.Consumer)
	if err != nil {
		return nil, fmt.Errorf("consumer %s/%s: %w", t.JobsStream, t.Consumer, err)
	}
	// The consumer's settings rule, whoever made it: they decide when a job is
	// redelivered and when its attempts run out.
	if info := cons.CachedInfo(); info != nil {
		w.cfg.topo.MaxDeliver, w.cfg.topo.AckWait = info.Config.MaxDeliver, info.Config.AckWait
		w.cfg.heartbeat = heartbeatInterval(info.Config.AckWait)
	}
	return cons, nil
}

// drain gives the running jobs the grace period to finish, then ends those that
// did not: their deliveries go back to the queue.
func (w *Worker) drain(running *sync.WaitGroup, stopJobs context.CancelCauseFunc) {
	w.cfg.log.Info("worker stopping: no new jobs", zap.Duration("grace", w.cfg.grace))
	done := make(chan struct{})
	go func() { running.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(w.cfg.grace):
		w.cfg.log.Warn("grace period over: handing running jobs back to the queue")
		stopJobs(errShutdown)
		<-done
	}
}
