package worker

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/blockferry/blockferry/internal/safe"
	"github.com/blockferry/blockferry/jobs"
)

// jobRun is one delivery of a job being handled.
type jobRun struct {
	msg     jetstream.Msg // nil for a job settled from an advisory
	spec    jobs.Spec
	attempt int
	seq     uint64 // the job message's stream sequence
	log     *zap.Logger
	// lease ends with cause errLostDelivery when the delivery is no longer this
	// attempt's; nil for a job that does not run.
	lease   context.Context
	earlier *JobStatus // the status of a job that had ended before this delivery
	started time.Time

	mu      sync.Mutex
	counted jobs.ProgressSnapshot // bytes already added to the metrics
}

func (j *jobRun) data(worker string) EventData {
	return EventData{JobID: j.spec.ID, Kind: j.spec.Kind, Disk: j.spec.Disk, Attempt: j.attempt, Worker: worker, Labels: j.spec.Labels}
}

func (j *jobRun) status(state, worker string) JobStatus {
	return JobStatus{JobID: j.spec.ID, Kind: j.spec.Kind, Disk: j.spec.Disk, State: state, Attempt: j.attempt, Worker: worker, Seq: j.seq}
}

// deliveryLost reports whether the job's delivery went to another attempt.
func (j *jobRun) deliveryLost() bool {
	return j.lease != nil && errors.Is(context.Cause(j.lease), errLostDelivery)
}

// handle runs one delivery of a job to its end, which decide and settle make
// known: a terminal event and ack/term, a retrying event and nak, or (shutting
// down) a plain nak.
func (w *Worker) handle(ctx context.Context, msg jetstream.Msg) {
	j := &jobRun{msg: msg, attempt: 1, log: w.cfg.log}
	if meta, err := msg.Metadata(); err == nil {
		j.attempt, j.seq = int(meta.NumDelivered), meta.Sequence.Stream
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
		if st.Seq != 0 && j.seq != 0 && st.Seq != j.seq {
			e.reused = st.describe()
		} else {
			e.ended, j.earlier = st.State, &st
		}
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
// Heartbeats go on until the delivery is answered: publishing the outcome may
// take a while (a stream leader election), and the job must not be handed to
// another worker meanwhile.
func (w *Worker) run(ctx context.Context, j *jobRun) {
	jobCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	defer w.track(j.spec.ID, cancel)()
	if w.cancelRequested(ctx, j.spec.ID) { // requested between the check and tracking
		cancel(errCancelled)
	}
	j.lease = jobCtx

	progress := jobs.NewProgress()
	j.started = time.Now()
	w.cfg.metrics.JobStarted(j.spec.Kind)
	_ = w.status.put(ctx, j.status(StateRunning, w.cfg.name))
	if err := w.events.publish(ctx, EventStarted, fmt.Sprintf("%s.started.%d", j.spec.ID, j.attempt), j.data(w.cfg.name)); err != nil {
		j.log.Warn("publishing started event", zap.Error(err))
	}
	j.log.Info("job started", zap.String("kind", j.spec.Kind))
	stopBeats := w.heartbeats(jobCtx, j, cancel)
	stopProgress := w.progressReports(jobCtx, j, progress)
	res, err := w.runGuarded(jobCtx, j, progress)
	stopProgress()

	v := decide(end{attempt: j.attempt, err: err, cause: context.Cause(jobCtx)}, w.cfg.topo)
	w.settle(ctx, j, v, &res)
	stopBeats()
	w.cfg.metrics.JobFinished(j.spec.Kind, v.outcome, v.code(), time.Since(j.started))
}

// runGuarded runs the job; a panic in it fails this job (safe.ErrPanic, which
// the classification table makes internal and permanent; logged with its stack)
// and never the worker and the jobs running beside it.
func (w *Worker) runGuarded(ctx context.Context, j *jobRun, p *jobs.Progress) (res jobs.Result, err error) {
	err = safe.Call(func() error {
		res, err = w.runner.Run(ctx, j.spec, p, jobs.FromMessage(strconv.FormatUint(j.seq, 10)))
		return err
	})
	if errors.Is(err, safe.ErrPanic) {
		j.log.Error("job panicked", zap.Error(err))
		res = jobs.Result{}
	}
	return res, err
}

// heartbeats keeps the delivery alive until the returned function is called.
func (w *Worker) heartbeats(ctx context.Context, j *jobRun, cancel context.CancelCauseFunc) func() {
	ctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	wg.Go(func() { w.keepAlive(ctx, j, cancel) })
	return func() { stop(); wg.Wait() }
}

// progressReports publishes progress until the returned function is called. It
// runs apart from the heartbeats so that a slow publish never holds one up.
func (w *Worker) progressReports(ctx context.Context, j *jobRun, p *jobs.Progress) func() {
	ctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { w.reportProgress(ctx, j, p) })
	return func() {
		stop()
		wg.Wait()
		j.countBytes(w.cfg.metrics, p.Snapshot())
	}
}

// keepAlive tells JetStream the job is in progress every heartbeat interval until
// ctx ends, and checks each time that the delivery is still this attempt's. When
// it is not, it cancels the job with errLostDelivery: two attempts at once would
// race on the job's checkpoint and outcome.
func (w *Worker) keepAlive(ctx context.Context, j *jobRun, cancel context.CancelCauseFunc) {
	beat := time.NewTicker(w.cfg.heartbeat)
	defer beat.Stop()
	lastOK := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-beat.C:
		}
		// A pause (SIGSTOP, a long GC, a stalled host) longer than the ack wait
		// means JetStream has redelivered the job: no heartbeat can win it back.
		if since := time.Since(lastOK); since > w.cfg.topo.AckWait {
			j.log.Error("no heartbeat for longer than the ack wait", zap.Duration("since", since))
			cancel(errLostDelivery)
			return
		}
		if lost := w.superseded(ctx, j); lost != "" {
			j.log.Error("delivery lost", zap.String("reason", lost))
			cancel(errLostDelivery)
			return
		}
		err := j.msg.InProgress()
		w.cfg.metrics.Heartbeat(err)
		if err != nil {
			j.log.Warn("heartbeat", zap.Error(err))
			continue
		}
		lastOK = time.Now()
	}
}

// superseded says why the job's status shows that another attempt or message
// owns the job now, or "" when it does not (or cannot be read: then the ack
// wait decides).
func (w *Worker) superseded(ctx context.Context, j *jobRun) string {
	ctx, cancel := context.WithTimeout(ctx, w.cfg.heartbeat)
	defer cancel()
	st, _, known, err := w.status.get(ctx, j.spec.ID)
	switch {
	case err != nil || !known:
		return ""
	case st.Seq != 0 && j.seq != 0 && st.Seq != j.seq:
		return fmt.Sprintf("job message %d took the job id", st.Seq)
	case st.Attempt > j.attempt:
		return fmt.Sprintf("attempt %d runs on %s", st.Attempt, st.Worker)
	}
	return ""
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
