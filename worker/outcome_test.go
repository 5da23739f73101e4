package worker

import (
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"

	"github.com/blockferry/blockferry/internal/safe"
	"github.com/blockferry/blockferry/jobs"
)

// seen is what a verdict shows the outside world, without its log fields.
type seen struct {
	state, event string
	code         string
	reply        reply
	delay        time.Duration
	outcome      string
	note         string
	level        zapcore.Level
}

func (v verdict) seen() seen {
	return seen{state: v.state, event: v.event, code: v.code(), reply: v.reply, delay: v.delay, outcome: v.outcome, note: v.note, level: v.level}
}

// TestDecide is the table of what the outside world sees when a delivery ends:
// status, event, answer to JetStream, redelivery delay, metrics outcome, log line.
func TestDecide(t *testing.T) {
	topo := DefaultTopology()
	topo.MaxDeliver = 3
	topo.Backoff = []time.Duration{time.Second, time.Minute}
	invalid := fmt.Errorf("%w: no disk", jobs.ErrInvalid)
	transient := fmt.Errorf("read: %w", io.ErrUnexpectedEOF)
	for _, c := range []struct {
		name string
		end  end
		want seen
	}{
		{"rejected without an id", end{attempt: 1, err: invalid, rejected: true, unnamed: true},
			seen{reply: replyTerm, note: "rejected job", level: zapcore.WarnLevel}},
		{"rejected with an id", end{attempt: 1, err: invalid, rejected: true},
			seen{state: StateFailed, event: EventFailed, code: jobs.CodeInvalidJob, reply: replyTerm, note: "rejected job", level: zapcore.WarnLevel}},
		{"redelivered after it ended", end{attempt: 2, ended: StateCompleted},
			seen{reply: replyAck, note: "job already ended", level: zapcore.InfoLevel}},
		{"deliveries exhausted", end{attempt: 3, exhausted: true},
			seen{state: StateFailed, event: EventFailed, code: jobs.CodeExhausted}},
		{"completed", end{attempt: 1},
			seen{state: StateCompleted, event: EventCompleted, reply: replyDoubleAck, outcome: StateCompleted}},
		{"completed as the grace period ended", end{attempt: 1, cause: errShutdown},
			seen{state: StateCompleted, event: EventCompleted, reply: replyDoubleAck, outcome: StateCompleted}},
		{"cancelled while queued", end{attempt: 1, err: errCancelled, cause: errCancelled},
			seen{state: StateCancelled, event: EventCancelled, reply: replyTerm, outcome: StateCancelled}},
		{"cancelled while running", end{attempt: 2, err: context.Canceled, cause: errCancelled},
			seen{state: StateCancelled, event: EventCancelled, reply: replyTerm, outcome: StateCancelled}},
		{"delivery lost", end{attempt: 1, err: context.Canceled, cause: errLostDelivery},
			seen{reply: replyNone, outcome: outcomeRequeued, note: "stopping a job whose delivery was lost", level: zapcore.ErrorLevel}},
		{"job id reused", end{attempt: 1, reused: "job message 3 is completed"},
			seen{event: EventFailed, code: CodeDuplicateJob, reply: replyTerm, note: "job id reused", level: zapcore.WarnLevel}},
		{"panicked", end{attempt: 1, err: fmt.Errorf("%w: index out of range", safe.ErrPanic)},
			seen{state: StateFailed, event: EventFailed, code: jobs.CodeInternal, reply: replyTerm, outcome: StateFailed}},
		{"grace period over", end{attempt: 1, err: context.Canceled, cause: errShutdown},
			seen{state: StateQueued, reply: replyNak, outcome: outcomeRequeued, note: "handing job back to the queue", level: zapcore.InfoLevel}},
		{"permanent failure", end{attempt: 1, err: invalid},
			seen{state: StateFailed, event: EventFailed, code: jobs.CodeInvalidJob, reply: replyTerm, outcome: StateFailed}},
		{"transient failure, first attempt", end{attempt: 1, err: transient},
			seen{state: StateRetrying, event: EventRetrying, code: jobs.CodeIO, reply: replyNak, delay: time.Second, outcome: StateRetrying,
				note: "job failed, will retry", level: zapcore.WarnLevel}},
		{"transient failure beyond the backoff list", end{attempt: 2, err: transient},
			seen{state: StateRetrying, event: EventRetrying, code: jobs.CodeIO, reply: replyNak, delay: time.Minute, outcome: StateRetrying,
				note: "job failed, will retry", level: zapcore.WarnLevel}},
		{"transient failure, last attempt", end{attempt: 3, err: transient},
			seen{state: StateFailed, event: EventFailed, code: jobs.CodeIO, reply: replyTerm, outcome: StateFailed}},
	} {
		t.Run(c.name, func(t *testing.T) {
			v := decide(c.end, topo)
			if got := v.seen(); got != c.want {
				t.Errorf("decide(%+v)\n got %+v\nwant %+v", c.end, got, c.want)
			}
			if v.aside {
				// An event about another message with the job's id: the job's
				// own status and terminal event stay as they are.
				if v.state != "" || v.failure == nil {
					t.Errorf("aside verdict with state %q, failure %v", v.state, v.failure)
				}
				return
			}
			if (v.state == StateFailed || v.state == StateRetrying) != (v.failure != nil) {
				t.Errorf("state %q with failure %v: a failure or retry must say why, nothing else may", v.state, v.failure)
			}
			if TerminalState(v.state) != Terminal(v.event) {
				t.Errorf("state %q with event %q: a job ends with exactly one terminal event", v.state, v.event)
			}
		})
	}
}

func TestDecideFailureMessages(t *testing.T) {
	topo := DefaultTopology()
	invalid := fmt.Errorf("%w: a backup job published on blockferry.jobs.restore", jobs.ErrInvalid)
	if v := decide(end{attempt: 1, err: invalid, rejected: true}, topo); v.failure.Message != invalid.Error() || v.failure.Retryable {
		t.Errorf("rejected: failure %+v, want the rejection's message, not retryable", *v.failure)
	}
	v := decide(end{attempt: topo.MaxDeliver, exhausted: true}, topo)
	if want := fmt.Sprintf("no attempt of %d ended", topo.MaxDeliver); !strings.Contains(v.failure.Message, want) || v.failure.Retryable {
		t.Errorf("exhausted: failure %+v, want a message that says %q, not retryable", *v.failure, want)
	}
}
