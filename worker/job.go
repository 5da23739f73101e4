package worker

import (
	"context"
	"errors"
	"fmt"
	"strings"
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

// handle runs one delivery of a job to its end: a terminal event and ack/term,
// a retrying event and nak, or (shutting down) a plain nak.
func (w *Worker) handle(ctx context.Context, msg jetstream.Msg) {
	j := &jobRun{msg: msg, attempt: 1, log: w.cfg.log}
	if meta, err := msg.Metadata(); err == nil {
		j.attempt = int(meta.NumDelivered)
	}
	spec, err := jobs.DecodeSpec(msg.Data())
	j.spec = spec
	if err == nil && msg.Subject() != w.cfg.topo.JobSubject(spec.Kind) {
		err = fmt.Errorf("%w: a %s job published on %s", jobs.ErrInvalid, spec.Kind, msg.Subject())
	}
	if spec.ID != "" {
		j.log = j.log.With(zap.String("job_id", spec.ID), zap.String("disk", spec.Disk), zap.Int("attempt", j.attempt))
	}
	if err != nil {
		j.log.Warn("rejected job", zap.String("subject", msg.Subject()), zap.Error(err))
		if spec.ID != "" {
			w.finish(ctx, j, EventFailed, nil, err)
		}
		_ = msg.Term()
		return
	}
	st, _, known, err := w.status.get(ctx, spec.ID)
	if err == nil && known && TerminalState(st.State) {
		// A redelivery of a job that already ended (the worker died before its
		// ack): the outcome stands; acknowledge it and publish nothing new.
		j.log.Info("job already ended", zap.String("state", st.State))
		_ = msg.Ack()
		return
	}
	if w.cancelRequested(ctx, spec.ID) {
		w.finish(ctx, j, EventCancelled, nil, errCancelled)
		_ = msg.Term()
		return
	}

	jobCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	defer w.track(spec.ID, cancel)()
	if w.cancelRequested(ctx, spec.ID) { // requested between the check and tracking
		cancel(errCancelled)
	}

	progress := jobs.NewProgress()
	j.started = time.Now()
	w.cfg.metrics.JobStarted(spec.Kind)
	outcome, code := "", ""
	defer func() { w.cfg.metrics.JobFinished(spec.Kind, outcome, code, time.Since(j.started)) }()
	d := j.data(w.cfg.name)
	_ = w.status.put(ctx, JobStatus{JobID: spec.ID, Kind: spec.Kind, Disk: spec.Disk, State: StateRunning, Attempt: j.attempt, Worker: w.cfg.name})
	if err := w.events.publish(ctx, EventStarted, fmt.Sprintf("%s.started.%d", spec.ID, j.attempt), d); err != nil {
		j.log.Warn("publishing started event", zap.Error(err))
	}
	j.log.Info("job started", zap.String("kind", spec.Kind))
	stopBeats := w.heartbeats(jobCtx, j, progress, cancel)
	res, err := w.runner.Run(jobCtx, spec, progress)
	stopBeats()

	cause := context.Cause(jobCtx)
	switch {
	case err == nil:
		outcome = StateCompleted
		w.finish(ctx, j, EventCompleted, &res, nil)
		if err := msg.DoubleAck(ctx); err != nil {
			j.log.Warn("ack", zap.Error(err))
		}
	case errors.Is(cause, errCancelled):
		outcome = StateCancelled
		w.finish(ctx, j, EventCancelled, nil, errCancelled)
		_ = msg.Term()
	case errors.Is(cause, errLostDelivery):
		outcome = "requeued"
		j.log.Error("stopping a job whose delivery was lost")
		_ = msg.Nak()
	case errors.Is(cause, errShutdown):
		outcome = "requeued"
		j.log.Info("handing job back to the queue")
		_ = w.status.put(context.Background(), JobStatus{JobID: spec.ID, Kind: spec.Kind, Disk: spec.Disk, State: StateQueued, Attempt: j.attempt})
		_ = msg.Nak()
	default:
		f := jobs.Classify(err)
		code = f.Code
		if !f.Retryable || (w.cfg.topo.MaxDeliver > 0 && j.attempt >= w.cfg.topo.MaxDeliver) {
			outcome = StateFailed
			w.finish(ctx, j, EventFailed, &res, err) // a failed verify says what it found
			_ = msg.Term()
			return
		}
		outcome = StateRetrying
		delay := w.cfg.topo.retryDelay(j.attempt)
		d.Error, d.RetryIn = &f, delay.Seconds()
		j.log.Warn("job failed, will retry", zap.Error(err), zap.Duration("delay", delay))
		_ = w.status.put(ctx, JobStatus{JobID: spec.ID, Kind: spec.Kind, Disk: spec.Disk, State: StateRetrying, Attempt: j.attempt, Worker: w.cfg.name, Error: &f})
		_ = w.events.publish(ctx, EventRetrying, fmt.Sprintf("%s.retrying.%d", spec.ID, j.attempt), d)
		_ = msg.NakWithDelay(delay)
	}
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
// until ctx ends.
func (w *Worker) reportProgress(ctx context.Context, j *jobRun, p *jobs.Progress) {
	tick := time.NewTicker(progressInterval)
	defer tick.Stop()
	for n := 1; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
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
}

// countBytes adds what the job did since it was last counted to the byte metrics.
func (j *jobRun) countBytes(m Recorder, s jobs.ProgressSnapshot) {
	j.mu.Lock()
	defer j.mu.Unlock()
	m.Bytes(j.spec.Kind, s.BytesRead-j.counted.BytesRead, s.BytesWritten-j.counted.BytesWritten, s.BytesDeduplicated-j.counted.BytesDeduplicated)
	j.counted = s
}

// finish records a job's end and publishes its one terminal event. The status
// bucket decides, with compare-and-set, which outcome is the job's: a job that
// already ended publishes nothing more.
func (w *Worker) finish(ctx context.Context, j *jobRun, typ string, res *jobs.Result, err error) {
	ctx = context.WithoutCancel(ctx)
	d := j.data(w.cfg.name)
	st := JobStatus{JobID: j.spec.ID, Kind: j.spec.Kind, Disk: j.spec.Disk, Attempt: j.attempt, Worker: w.cfg.name}
	switch typ {
	case EventCompleted:
		st.State = StateCompleted
		d.Backup, d.Stats = resultSummary(j.spec, res)
		st.Backup, st.Stats = d.Backup, d.Stats
	case EventCancelled:
		st.State = StateCancelled
	default:
		st.State = StateFailed
		f := jobs.Classify(err)
		d.Error, st.Error = &f, &f
		if res != nil && res.Verify != nil { // the chunks found missing or corrupt
			d.Stats, st.Stats = res.Verify, res.Verify
		}
	}
	written, serr := w.status.transition(ctx, st)
	if serr != nil {
		j.log.Warn("recording job status", zap.Error(serr))
	} else if !written {
		j.log.Info("job had already ended; no second terminal event")
		return
	}
	// The status now says the job ended, so a redelivery will not publish this
	// event: retry it here. Its id makes a duplicate harmless.
	for try := 1; ; try++ {
		err := w.events.publish(ctx, typ, j.spec.ID+".end", d)
		if err == nil {
			break
		}
		if try == 8 {
			j.log.Error("publishing terminal event", zap.Error(err))
			break
		}
		time.Sleep(time.Duration(try) * 500 * time.Millisecond)
	}
	switch typ {
	case EventFailed:
		j.log.Warn("job failed", zap.String("code", d.Error.Code), zap.String("error", d.Error.Message))
	default:
		j.log.Info("job ended", zap.String("outcome", strings.TrimPrefix(typ, "io.blockferry.job.")))
	}
}

func resultSummary(s jobs.Spec, res *jobs.Result) (string, any) {
	switch {
	case res == nil:
		return s.Backup, nil
	case res.Backup != nil:
		return res.Backup.ID, res.Backup.Stats
	case res.Restore != nil:
		return s.Backup, res.Restore
	case res.Verify != nil:
		return s.Backup, res.Verify
	}
	return s.Backup, nil
}
