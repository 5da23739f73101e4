package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
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
	// reused describes the earlier outcome of another job message with this
	// message's job id: this one is a duplicate and does not run.
	reused string
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
	// aside: the event is about a message that is not the job's (its id was
	// reused); the job's status and terminal event stay the earlier message's.
	aside bool
	// settled: the job ended before; its terminal event is published again if
	// the attempt that ended it died before it could.
	settled bool
	note    string // logged at level with fields, before anything else is done
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
		return verdict{reply: replyAck, settled: true, note: "job already ended", level: zapcore.InfoLevel, fields: []zap.Field{zap.String("state", e.ended)}}
	case e.reused != "":
		f := &jobs.Failure{Code: CodeDuplicateJob, Message: "job id already used: " + e.reused}
		return verdict{event: EventFailed, failure: f, aside: true, reply: replyTerm,
			note: "job id reused", level: zapcore.WarnLevel, fields: []zap.Field{zap.String("earlier", e.reused)}}
	case e.exhausted:
		err := fmt.Errorf("%w: no attempt of %d ended with an outcome (its workers died, lost their heartbeats or were shut down)",
			jobs.ErrDeliveriesExhausted, t.MaxDeliver)
		return verdict{state: StateFailed, event: EventFailed, failure: classify(err)}
	case e.err == nil:
		return verdict{state: StateCompleted, event: EventCompleted, reply: replyDoubleAck, outcome: StateCompleted}
	case errors.Is(e.cause, errCancelled):
		return verdict{state: StateCancelled, event: EventCancelled, reply: replyTerm, outcome: StateCancelled}
	case errors.Is(e.cause, errLostDelivery):
		// The message is another attempt's now: any answer (even a nak) would
		// be applied to that attempt's delivery.
		return verdict{reply: replyNone, outcome: outcomeRequeued, note: "stopping a job whose delivery was lost", level: zapcore.ErrorLevel}
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
// What is said is said in full even when the grace period ends meanwhile. When
// the outcome cannot be recorded, the delivery is handed back (or, when it was
// lost, left to its new attempt) so that a later one records it.
func (w *Worker) settle(ctx context.Context, j *jobRun, v verdict, res *jobs.Result) {
	ctx = context.WithoutCancel(ctx)
	if v.note != "" {
		j.log.Log(v.level, v.note, v.fields...)
	}
	var err error
	switch {
	case v.aside:
		d := j.data(w.cfg.name)
		d.Error = v.failure
		err = w.persist(ctx, j, "publishing the duplicate's event", func(ctx context.Context) error {
			return w.events.publish(ctx, v.event, fmt.Sprintf("%s.duplicate.%d", j.spec.ID, j.seq), d)
		})
	case v.settled:
		err = w.persist(ctx, j, "republishing the terminal event", func(ctx context.Context) error { return w.republishEnd(ctx, j) })
	case Terminal(v.event):
		err = w.finish(ctx, j, v, res)
	case v.state != "":
		w.record(ctx, j, v)
	}
	w.answer(ctx, j, v, err)
}

// answer replies to the delivery as v says, unless the outcome could not be
// recorded (err): then the job is handed back, or left alone when its delivery
// is another attempt's.
func (w *Worker) answer(ctx context.Context, j *jobRun, v verdict, err error) {
	if j.msg == nil || v.reply == replyNone {
		return
	}
	if j.deliveryLost() || errors.Is(err, errLostDelivery) {
		j.log.Warn("delivery lost before the job's outcome was answered; its new attempt answers it", zap.Error(err))
		return
	}
	if err != nil {
		j.log.Error("handing the job back: its outcome was not recorded", zap.Error(err))
		v.reply, v.delay = replyNak, 0
	}
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

// finalWriteBudget bounds the retries of a job's final status write and
// terminal event: long enough to ride out a stream leader election, short
// enough that a broken store does not hold a job slot for good.
var finalWriteBudget = 2 * time.Minute

// persist calls write until it succeeds, the delivery is lost to another attempt
// or finalWriteBudget has passed, with a growing pause between tries.
func (w *Worker) persist(ctx context.Context, j *jobRun, what string, write func(context.Context) error) error {
	deadline := time.Now().Add(finalWriteBudget)
	for pause := 250 * time.Millisecond; ; pause = min(2*pause, 5*time.Second) {
		err := write(ctx)
		switch {
		case err == nil:
			return nil
		case j.deliveryLost() || errors.Is(err, errSuperseded):
			return fmt.Errorf("%s: %w (%w)", what, errLostDelivery, err)
		case time.Now().Add(pause).After(deadline):
			return fmt.Errorf("%s: %w", what, err)
		}
		j.log.Warn(what+": will retry", zap.Error(err), zap.Duration("in", pause))
		sleep(ctx, pause)
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
// already ended publishes nothing more. Both writes are retried (persist); the
// event's id makes a repeated publish harmless to stream readers.
func (w *Worker) finish(ctx context.Context, j *jobRun, v verdict, res *jobs.Result) error {
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
	var written bool
	err := w.persist(ctx, j, "recording job status", func(ctx context.Context) (err error) {
		written, err = w.status.transition(ctx, st)
		return err
	})
	if err != nil {
		return err
	}
	if !written {
		j.log.Info("job had already ended; no second terminal event")
		return nil
	}
	if err := w.persist(ctx, j, "publishing the terminal event", func(ctx context.Context) error {
		return w.events.publish(ctx, v.event, j.spec.ID+".end", d)
	}); err != nil {
		return err
	}
	if v.state == StateFailed {
		j.log.Warn("job failed", zap.String("code", v.code()), zap.String("error", d.Error.Message))
		return nil
	}
	j.log.Info("job ended", zap.String("outcome", eventName(v.event)))
	return nil
}

// republishEnd publishes the terminal event of a job that ended, unless the
// events stream has it: the attempt that ended the job may have died between its
// status write and its event.
func (w *Worker) republishEnd(ctx context.Context, j *jobRun) error {
	st := j.earlier
	if st == nil {
		return nil
	}
	stream, err := w.js.Stream(ctx, w.cfg.topo.EventsStream)
	if err != nil {
		return err
	}
	last, err := stream.GetLastMsgForSubject(ctx, w.cfg.topo.EventSubject(st.JobID))
	if err == nil {
		var ev Event
		if json.Unmarshal(last.Data, &ev) == nil && ev.ID == st.JobID+".end" {
			return nil
		}
	} else if !errors.Is(err, jetstream.ErrMsgNotFound) {
		return err
	}
	d := EventData{JobID: st.JobID, Kind: st.Kind, Disk: st.Disk, Attempt: st.Attempt, Worker: st.Worker, Labels: j.spec.Labels,
		Backup: st.Backup, Stats: st.Stats, Error: st.Error}
	j.log.Warn("publishing the terminal event its attempt did not", zap.String("state", st.State))
	return w.events.publish(ctx, endEvent[st.State], st.JobID+".end", d)
}

// endEvent is the terminal event of each terminal state.
var endEvent = map[string]string{StateCompleted: EventCompleted, StateFailed: EventFailed, StateCancelled: EventCancelled}

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
	case res.Prune != nil:
		return "", res.Prune
	case res.Serve != nil:
		return s.Backup, res.Serve
	}
	return s.Backup, nil
}
