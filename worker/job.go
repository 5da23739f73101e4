package worker

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/blockferry/blockferry/jobs"
)

// jobRun is one delivery of a job being handled.
type jobRun struct {
	msg     jetstream.Msg // nil for a job settled from an advisory
	spec    jobs.Spec
	attempt int
	log     *zap.Logger
	started time.Time

	mu      sync.Mutex
	counted jobs.ProgressSnapshot // bytes already added to the metrics
}

func (j *jobRun) data(worker string) EventData {
	return EventData{JobID: j.spec.ID, Kind: j.spec.Kind, Disk: j.spec.Disk, Attempt: j.attempt, Worker: worker, Labels: j.spec.Labels}
}

func (j *jobRun) status(state, worker string) JobStatus {
	return JobStatus{JobID: j.spec.ID, Kind: j.spec.Kind, Disk: j.spec.Disk, State: state, Attempt: j.attempt, Worker: worker}
}

// handle runs one delivery of a job to its end, which decide and settle make
// known: a terminal event and ack/term, a retrying event and nak, or (shutting
// down) a plain nak.
func (w *Worker) handle(ctx context.Context, msg jetstream.Msg) {
	j := &jobRun{msg: msg, attempt: 1, log: w.cfg.log}
	if meta, err := msg.Metadata(); err == nil {
		j.attempt = int(meta.NumDelivered)
	}
	if e, stop := w.admit(ctx, j); stop {
		w.settle(ctx, j, decide(e, w.cfg.topo), nil)
		return
	}
	w.run(ctx, j)
}

// admit decodes the job and checks that it is still to be run. When it is not
// (rejected, already ended, cancelled while queued) it returns the end that says
// why, and true.
func (w *Worker) admit(ctx context.Context, j *jobRun) (end, bool) {
	spec, err := jobs.DecodeSpec(j.msg.Data())
	j.spec = spec
	if err == nil && j.msg.Subject() != w.cfg.topo.JobSubject(spec.Kind) {
		err = fmt.Errorf("%w: a %s job published on %s", jobs.ErrInvalid, spec.Kind, j.msg.Subject())
	}
	if spec.ID != "" {
		j.log = j.log.With(zap.String("job_id", spec.ID), zap.String("disk", spec.Disk), zap.Int("attempt", j.attempt))
	}
	e := end{attempt: j.attempt}
	if err != nil {
		j.log = j.log.With(zap.String("subject", j.msg.Subject()))
		e.err, e.rejected, e.unnamed = err, true, spec.ID == ""
		return e, true
	}
	if st, _, known, err := w.status.get(ctx, spec.ID); err == nil && known && TerminalState(st.State) {
		e.ended = st.State
		return e, true
	}
	if w.cancelRequested(ctx, spec.ID) {
		e.err, e.cause = errCancelled, errCancelled
		return e, true
	}
	return e, false
}

// run runs an admitted job under its own context, which a cancellation, a lost
// delivery or the end of the grace period ends, and settles how it ended.
func (w *Worker) run(ctx context.Context, j *jobRun) {
	jobCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	defer w.track(j.spec.ID, cancel)()
	if w.cancelRequested(ctx, j.spec.ID) { // requested between the check and tracking
		cancel(errCancelled)
	}

	progress := jobs.NewProgress()
	j.started = time.Now()
	w.cfg.metrics.JobStarted(j.spec.Kind)
	_ = w.status.put(ctx, j.status(StateRunning, w.cfg.name))
	if err := w.events.publish(ctx, EventStarted, fmt.Sprintf("%s.started.%d", j.spec.ID, j.attempt), j.data(w.cfg.name)); err != nil {
		j.log.Warn("publishing started event", zap.Error(err))
	}
	j.log.Info("job started", zap.String("kind", j.spec.Kind))
	stopBeats := w.heartbeats(jobCtx, j, progress, cancel)
	res, err := w.runner.Run(jobCtx, j.spec, progress)
	stopBeats()

	v := decide(end{attempt: j.attempt, err: err, cause: context.Cause(jobCtx)}, w.cfg.topo)
	w.settle(ctx, j, v, &res)
	w.cfg.metrics.JobFinished(j.spec.Kind, v.outcome, v.code(), time.Since(j.started))
}

// heartbeats keeps the delivery alive with InProgress and publishes progress; the
// returned function stops both. They run apart so that a slow publish never holds
// up a heartbeat.
func (w *Worker) heartbeats(ctx context.Context, j *jobRun, p *jobs.Progress, cancel context.CancelCauseFunc) func() {
	ctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { w.keepAlive(ctx, j, cancel) })
	wg.Go(func() { w.reportProgress(ctx, j, p) })
	return func() {
		stop()
		wg.Wait()
		j.countBytes(w.cfg.metrics, p.Snapshot())
	}
}

// keepAlive tells JetStream the job is in progress every heartbeat interval until
// ctx ends. When heartbeats fail for longer than the ack wait it cancels the job
// with errLostDelivery.
func (w *Worker) keepAlive(ctx context.Context, j *jobRun, cancel context.CancelCauseFunc) {
	beat := time.NewTicker(w.cfg.heartbeat)
	defer beat.Stop()
	lastOK := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-beat.C:
			err := j.msg.InProgress()
			w.cfg.metrics.Heartbeat(err)
			if err == nil {
				lastOK = time.Now()
				continue
			}
			j.log.Warn("heartbeat", zap.Error(err))
			if time.Since(lastOK) > w.cfg.topo.AckWait {
				// Another worker has the job by now: two attempts at once
				// would race on its checkpoint and outcome.
				cancel(errLostDelivery)
				return
			}
		}
	}
}

// reportProgress publishes a progress event and status every progressInterval
// until ctx ends, and one at once when a serve job's export is up.
func (w *Worker) reportProgress(ctx context.Context, j *jobRun, p *jobs.Progress) {
	tick := time.NewTicker(progressInterval)
	defer tick.Stop()
	exported := p.Exported()
	for n := 1; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-exported:
			exported = nil
		case <-tick.C:
		}
		snap := p.Snapshot()
		j.countBytes(w.cfg.metrics, snap)
		d := j.data(w.cfg.name)
		d.setProgress(snap)
		_ = w.events.publish(ctx, EventProgress, fmt.Sprintf("%s.progress.%d.%d", j.spec.ID, j.attempt, n), d)
		st := j.status(StateRunning, w.cfg.name)
		st.Progress = &snap
		_ = w.status.put(ctx, st)
	}
}

// countBytes adds what the job did since it was last counted to the byte metrics.
func (j *jobRun) countBytes(m Recorder, s jobs.ProgressSnapshot) {
	j.mu.Lock()
	defer j.mu.Unlock()
	m.Bytes(j.spec.Kind, s.BytesRead-j.counted.BytesRead, s.BytesWritten-j.counted.BytesWritten, s.BytesDeduplicated-j.counted.BytesDeduplicated)
	j.counted = s
}
