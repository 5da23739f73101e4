package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/blockferry/blockferry/jobs"
)

// Client submits, watches, queries and cancels jobs: what an orchestrator does,
// for the command line. Any NATS client can do the same by the contract in
// docs/JOBS.md.
type Client struct {
	js   jetstream.JetStream
	topo Topology
}

// NewClient makes a client for the deployment described by t.
func NewClient(js jetstream.JetStream, t Topology) *Client { return &Client{js: js, topo: t} }

// ErrUnknownJob: the status bucket has no such job.
var ErrUnknownJob = errors.New("unknown job")

// Submit validates a job and publishes it with its id as Nats-Msg-Id. It reports
// whether the job was new. JetStream drops a job whose id was used within its
// duplicate window without a word; Submit answers such a re-submission with one
// failed event (code duplicate_job) that names the earlier job's state, as a
// worker does for an id reused after the window.
func (c *Client) Submit(ctx context.Context, s jobs.Spec) (bool, error) {
	if err := s.Validate(); err != nil {
		return false, err
	}
	body, err := json.Marshal(s)
	if err != nil {
		return false, err
	}
	msg := &nats.Msg{Subject: c.topo.JobSubject(s.Kind), Data: body, Header: nats.Header{}}
	msg.Header.Set(jetstream.MsgIDHeader, s.ID)
	pubCtx, stop := watchViolations(ctx, c.js.Conn(), msg.Subject)
	ack, err := c.js.PublishMsg(pubCtx, msg)
	stop()
	if cause := context.Cause(pubCtx); err != nil && errors.Is(cause, nats.ErrPermissionViolation) {
		err = cause // refused by the server, not timed out
	}
	if err != nil {
		return false, fmt.Errorf("submit job %s: %w", s.ID, err)
	}
	kv, kvErr := c.js.KeyValue(ctx, c.topo.StatusBucket)
	if !ack.Duplicate {
		if kvErr == nil { // the status is a convenience until a worker writes it
			_ = statusStore{kv: kv}.put(ctx, JobStatus{JobID: s.ID, Kind: s.Kind, Disk: s.Disk, State: StateQueued, Seq: ack.Sequence})
		}
		return true, nil
	}
	earlier := JobStatus{Seq: ack.Sequence, State: "of unknown state"}
	if kvErr == nil {
		if st, _, known, err := (statusStore{kv: kv}).get(ctx, s.ID); err == nil && known {
			earlier = st
		}
	}
	d := EventData{JobID: s.ID, Kind: s.Kind, Disk: s.Disk, Labels: s.Labels,
		Error: &jobs.Failure{Code: CodeDuplicateJob, Message: "job id already used: " + earlier.describe()}}
	p := publisher{js: c.js, topo: c.topo, source: "blockferry/submit"}
	if err := p.publish(ctx, EventFailed, fmt.Sprintf("%s.duplicate.%d", s.ID, ack.Sequence), d); err != nil {
		return false, err
	}
	return false, nil
}

// Status returns a job's latest state.
func (c *Client) Status(ctx context.Context, id string) (JobStatus, error) {
	kv, err := c.js.KeyValue(ctx, c.topo.StatusBucket)
	if err != nil {
		return JobStatus{}, fmt.Errorf("status bucket: %w", err)
	}
	st, _, ok, err := statusStore{kv: kv}.get(ctx, id)
	if err != nil {
		return JobStatus{}, err
	}
	if !ok {
		return JobStatus{}, fmt.Errorf("job %s: %w", id, ErrUnknownJob)
	}
	return st, nil
}

// Cancel asks for a job to be cancelled: a queued job is cancelled when a worker
// takes it, a running one at once. The request is stored in a bucket, so it
// survives worker restarts.
func (c *Client) Cancel(ctx context.Context, id string) error {
	kv, err := c.js.KeyValue(ctx, c.topo.CancelBucket)
	if err != nil {
		return fmt.Errorf("cancel bucket: %w", err)
	}
	if _, err := kv.Put(ctx, id, []byte(time.Now().UTC().Format(time.RFC3339))); err != nil {
		return fmt.Errorf("cancel job %s: %w", id, err)
	}
	return nil
}

// watchPoll is how long Watch waits before it looks for a job's next event
// again; watchGiveUp is how long it keeps trying while the stream cannot be read.
const (
	watchPoll   = 250 * time.Millisecond
	watchGiveUp = time.Minute
)

// Watch calls fn with every event of job id (all jobs when id is empty), from the
// first one stored when replay is set, else from now on. It returns when fn
// returns false, ctx ends, or, for one job, after its terminal event.
//
// It reads the events stream message by message (a direct get of the next
// message on the job's subject), which needs no consumer on the server: nothing
// is left behind, and nothing has to be re-created when the server it talks to
// fails. The connection fails over, and the next read goes on from the last
// event seen.
func (c *Client) Watch(ctx context.Context, id string, replay bool, fn func(Event) bool) error {
	subject := c.topo.Prefix + ".events.>"
	if id != "" {
		subject = c.topo.EventSubject(id)
	}
	r := eventReader{js: c.js, stream: c.topo.EventsStream, subject: subject}
	if err := r.start(ctx, replay); err != nil {
		return fmt.Errorf("watch events: %w", err)
	}
	for {
		ev, err := r.next(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("watch events: %w", err)
		}
		if !fn(ev) || (id != "" && Terminal(ev.Type)) {
			return nil
		}
	}
}

// eventReader reads the events on subject from the stream, in order.
type eventReader struct {
	js      jetstream.JetStream
	stream  string
	subject string
	seq     uint64 // the next stream sequence to look from
	handle  jetstream.Stream
}

// start finds the stream, and the sequence to read from: the first, or the one
// after the last stored.
func (r *eventReader) start(ctx context.Context, replay bool) error {
	return r.retry(ctx, func() error {
		s, err := r.js.Stream(ctx, r.stream)
		if err != nil {
			return err
		}
		r.handle, r.seq = s, 1
		if !replay {
			info, err := s.Info(ctx)
			if err != nil {
				return err
			}
			r.seq = info.State.LastSeq + 1
		}
		return nil
	})
}

// next returns the next event, waiting for it.
func (r *eventReader) next(ctx context.Context) (Event, error) {
	for {
		var msg *jetstream.RawStreamMsg
		err := r.retry(ctx, func() error {
			var err error
			msg, err = r.handle.GetMsg(ctx, r.seq, jetstream.WithGetMsgSubject(r.subject))
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				msg, err = nil, nil // none yet
			}
			return err
		})
		if err != nil {
			return Event{}, err
		}
		if msg == nil {
			if err := sleepCtx(ctx, watchPoll); err != nil {
				return Event{}, err
			}
			continue
		}
		r.seq = msg.Sequence + 1
		var ev Event
		if json.Unmarshal(msg.Data, &ev) == nil {
			return ev, nil
		}
	}
}

// retry calls read until it works, ctx ends, or it failed for watchGiveUp (a
// server failing over answers errors or nothing for a few seconds).
func (r *eventReader) retry(ctx context.Context, read func() error) error {
	var failingSince time.Time
	for {
		err := read()
		switch {
		case err == nil:
			return nil
		case ctx.Err() != nil:
			return ctx.Err()
		case failingSince.IsZero():
			failingSince = time.Now()
		case time.Since(failingSince) > watchGiveUp:
			return err
		}
		if err := sleepCtx(ctx, watchPoll); err != nil {
			return err
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	sleep(ctx, d)
	return ctx.Err()
}
