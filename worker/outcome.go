package worker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/blockferry/blockferry/jobs"
)

// end is what is known when a delivery of a job ends, or when JetStream gives up
// on a job: the facts its verdict is decided from.
type end struct {
	attempt int
	// err is what the run returned, or why the delivery was rejected or not run.
	err error
	// cause is why the job's context ended (errCancelled, errShutdown,
	// errLostDelivery); nil when it did not.
	cause error
	// rejected: the message is no job this worker can run (err says why);
	// unnamed: not even its job id could be read, so there is no job to report on.
	rejected, unnamed bool
	// ended is the state a redelivered job had already ended in.
	ended string
	// exhausted: JetStream will not deliver the job again, and no attempt ended it.
	exhausted bool
}

// reply is how a delivery's message is answered.
type reply int

const (
	replyNone      reply = iota // no message to answer (an advisory told of the job)
	replyAck                    // done with: the job had ended before
	replyDoubleAck              // done with, confirmed by the server: the job completed
	replyNak                    // deliver again, after the verdict's delay
	replyTerm                   // never deliver again
)

// verdict is what the outside world sees when a delivery ends: the status
// recorded, the event published, the answer to JetStream, the metrics' outcome
// and the log line. decide makes it; settle does it.
type verdict struct {
	state   string        // written to the status bucket; "" writes nothing
	event   string        // published; "" publishes nothing
	failure *jobs.Failure // carried by the status and event of a failure or a retry
	reply   reply
	delay   time.Duration // before the job is delivered again, with replyNak
	outcome string        // the outcome of an attempt that ran, in the metrics
	note    string        // logged at level with fields, before anything else is done
	level   zapcore.Level
	fields  []zap.Field
}

// code is the error code of the verdict's failure, if any.
func (v verdict) code() string {
	if v.failure == nil {
		return ""
	}
	return v.failure.Code
}

// outcomeRequeued: the attempt ended without an outcome and the job goes back to
// the queue.
const outcomeRequeued = "requeued"

// decide says what the outside world sees when a delivery (or a job) ends as e
// says, under topology t. It is the one place that answers "what happens when".
func decide(e end, t Topology) verdict {
	switch {
	case e.rejected && e.unnamed:
		return verdict{reply: replyTerm, note: "rejected job", level: zapcore.WarnLevel, fields: []zap.Field{zap.Error(e.err)}}
	case e.rejected:
		return verdict{state: StateFailed, event: EventFailed, failure: classify(e.err), reply: replyTerm,
			note: "rejected job", level: zapcore.WarnLevel, fields: []zap.Field{zap.Error(e.err)}}
	case e.ended != "":
		// A redelivery of a job that already ended (the worker died before its
		// ack): the outcome stands; acknowledge it and publish nothing new.
		return verdict{reply: replyAck, note: "job already ended", level: zapcore.InfoLevel, fields: []zap.Field{zap.String("state", e.ended)}}
	case e.exhausted:
		err := fmt.Errorf("%w: no attempt of %d ended with an outcome (its workers died, lost their heartbeats or were shut down)",
			jobs.ErrDeliveriesExhausted, t.MaxDeliver)
		return verdict{state: StateFailed, event: EventFailed, failure: classify(err)}
	case e.err == nil:
		return verdict{state: StateCompleted, event: EventCompleted, reply: replyDoubleAck, outcome: StateCompleted}
	case errors.Is(e.cause, errCancelled):
		return verdict{state: StateCancelled, event: EventCancelled, reply: replyTerm, outcome: StateCancelled}
	case errors.Is(e.cause, errLostDelivery):
		return verdict{reply: replyNak, outcome: outcomeRequeued, note: "stopping a job whose delivery was lost", level: zapcore.ErrorLevel}
	case errors.Is(e.cause, errShutdown):
		return verdict{state: StateQueued, reply: replyNak, outcome: outcomeRequeued, note: "handing job back to the queue", level: zapcore.InfoLevel}
	}
	f := classify(e.err)
	if !f.Retryable || (t.MaxDeliver > 0 && e.attempt >= t.MaxDeliver) {
		return verdict{state: StateFailed, event: EventFailed, failure: f, reply: replyTerm, outcome: StateFailed}
	}
	delay := t.retryDelay(e.attempt)
	return verdict{state: StateRetrying, event: EventRetrying, failure: f, reply: replyNak, delay: delay, outcome: StateRetrying,
		note: "job failed, will retry", level: zapcore.WarnLevel, fields: []zap.Field{zap.Error(e.err), zap.Duration("delay", delay)}}
}

func classify(err error) *jobs.Failure {
	f := jobs.Classify(err)
	return &f
}

// settle does what v says, in the order the outside world should see it: the log
// line, then the status and event, then the answer to JetStream, after which the
// job may be delivered again. res is what the run returned, nil if it did not run.
// What is said is said in full even when the grace period ends meanwhile.
func (w *Worker) settle(ctx context.Context, j *jobRun, v verdict, res *jobs.Result) {
	ctx = context.WithoutCancel(ctx)
	if v.note != "" {
		j.log.Log(v.level, v.note, v.fields...)
	}
	switch {
	case Terminal(v.event):
		w.finish(ctx, j, v, res)
	case v.state != "":
		w.record(ctx, j, v)
	}
	var err error
	switch v.reply {
	case replyAck:
		err = j.msg.Ack()
	case replyDoubleAck:
		err = j.msg.DoubleAck(ctx)
	case replyNak:
		err = j.msg.NakWithDelay(v.delay) // a plain nak when delay is 0
	case replyTerm:
		err = j.msg.Term()
	}
	if err != nil {
		j.log.Warn("answering the job's delivery", zap.Error(err))
	}
}

// record writes a state a job does not end in (retrying, queued) and publishes
// its event, if it has one.
func (w *Worker) record(ctx context.Context, j *jobRun, v verdict) {
	st := j.status(v.state, w.cfg.name)
	if v.state == StateQueued {
		st.Worker = "" // handed back: no worker has it
	}
	st.Error = v.failure
	_ = w.status.put(ctx, st)
	if v.event == "" {
		return
	}
	d := j.data(w.cfg.name)
	d.Error, d.RetryIn = v.failure, v.delay.Seconds()
	_ = w.events.publish(ctx, v.event, fmt.Sprintf("%s.%s.%d", j.spec.ID, eventName(v.event), j.attempt), d)
}

// eventName is an event type without its namespace: "retrying" for
// io.blockferry.job.retrying.
func eventName(typ string) string { return strings.TrimPrefix(typ, "io.blockferry.job.") }

// finish records a job's end and publishes its one terminal event. The status
// bucket decides, with compare-and-set, which outcome is the job's: a job that
// already ended publishes nothing more.
func (w *Worker) finish(ctx context.Context, j *jobRun, v verdict, res *jobs.Result) {
	d := j.data(w.cfg.name)
	d.Error = v.failure
	switch {
	case v.state == StateCompleted:
		d.Backup, d.Stats = resultSummary(j.spec, res)
	case v.state == StateFailed && res != nil && res.Verify != nil:
		d.Stats = res.Verify // a failed verify says which chunks it found missing or corrupt
	}
	st := j.status(v.state, w.cfg.name)
	st.Error, st.Backup, st.Stats = v.failure, d.Backup, d.Stats
	written, err := w.status.transition(ctx, st)
	if err != nil {
		j.log.Warn("recording job status", zap.Error(err))
	} else if !written {
		j.log.Info("job had already ended; no second terminal event")
		return
	}
	w.publishEnd(ctx, j, v.event, d)
	if v.state == StateFailed {
		j.log.Warn("job failed", zap.String("code", v.code()), zap.String("error", d.Error.Message))
		return
	}
	j.log.Info("job ended", zap.String("outcome", eventName(v.event)))
}

// publishEnd publishes a terminal event, retrying for some 14 seconds: the status
// already says the job ended, so a redelivery will not publish it. Its id makes a
// duplicate harmless.
func (w *Worker) publishEnd(ctx context.Context, j *jobRun, typ string, d EventData) {
	for try := 1; ; try++ {
		err := w.events.publish(ctx, typ, j.spec.ID+".end", d)
		if err == nil {
			return
		}
		if try == 8 {
			j.log.Error("publishing terminal event", zap.Error(err))
			return
		}
		time.Sleep(time.Duration(try) * 500 * time.Millisecond)
	}
}

func resultSummary(s jobs.Spec, res *jobs.Result) (string, any) {
	switch {
	case res == nil:
		return s.Backup, nil
	case res.Backup != nil:
		return res.Backup.ID, summarizeBackup(res.Backup)
	case res.Restore != nil:
		return s.Backup, res.Restore
	case res.Verify != nil:
		return s.Backup, res.Verify
	case res.Serve != nil:
		return s.Backup, res.Serve
	}
	return s.Backup, nil
}
