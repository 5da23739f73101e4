package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/blockferry/blockferry/jobs"
)

// maxDeliveriesAdvisory is the part of JetStream's advisory that says a message
// will not be delivered again.
type maxDeliveriesAdvisory struct {
	Stream    string `json:"stream"`
	Consumer  string `json:"consumer"`
	StreamSeq uint64 `json:"stream_seq"`
}

// watchExhausted gives a job whose deliveries ran out without an outcome its one
// failed event. A failure the worker saw is already reported on the last attempt;
// this covers the attempts that ended with no word at all (the worker was killed
// each time). JetStream announces such a job with an advisory; every worker hears
// it, checks it against what it can see for itself (exhausted), and the status
// bucket lets only one of them report it.
func (w *Worker) watchExhausted(ctx context.Context, nc *nats.Conn) (func(), error) {
	t := w.cfg.topo
	subject := "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES." + t.JobsStream + "." + t.Consumer
	q := newAdvisoryQueue()
	for range advisoryCheckers {
		go q.serve(ctx, func(seq uint64) { w.failExhausted(ctx, seq) })
	}
	sub, err := nc.Subscribe(subject, func(m *nats.Msg) {
		var adv maxDeliveriesAdvisory
		if err := json.Unmarshal(m.Data, &adv); err != nil || adv.StreamSeq == 0 {
			return
		}
		if !q.add(adv.StreamSeq) {
			// Logged at the 1st, 2nd, 4th, 8th... drop: a flood must not flood the log.
			if n := q.drops.Add(1); n&(n-1) == 0 {
				w.cfg.log.Warn("max deliveries advisories dropped: too many waiting to be checked",
					zap.Uint64("stream_seq", adv.StreamSeq), zap.Int("waiting", maxAdvisoriesQueued), zap.Uint64("dropped", n))
			}
		}
	})
	if err != nil {
		return nil, fmt.Errorf("subscribe to %s: %w", subject, err)
	}
	return func() { _ = sub.Unsubscribe() }, nil
}

// Advisories are checked by advisoryCheckers goroutines from a queue of at most
// maxAdvisoriesQueued job messages, each queued once however many advisories name
// it. JetStream sends one advisory per exhausted message, and a check waits
// stillFor; but anyone who may publish on the advisory subject could send
// thousands a second, which must cost neither a goroutine each nor the genuine
// advisories among them: those wait their turn, and only a queue of thousands of
// distinct messages drops one.
const (
	advisoryCheckers    = 16
	maxAdvisoriesQueued = 4096
)

// advisoryQueue holds the job messages whose advisory awaits its check.
type advisoryQueue struct {
	mu      sync.Mutex
	pending map[uint64]bool // queued or being checked
	work    chan uint64
	drops   atomic.Uint64
}

func newAdvisoryQueue() *advisoryQueue {
	return &advisoryQueue{pending: map[uint64]bool{}, work: make(chan uint64, maxAdvisoriesQueued)}
}

// add queues seq unless it is pending already; it reports false when the queue
// is full. It never blocks: pending bounds what the channel holds.
func (q *advisoryQueue) add(seq uint64) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	switch {
	case q.pending[seq]:
		return true
	case len(q.pending) >= maxAdvisoriesQueued:
		return false
	}
	q.pending[seq] = true
	q.work <- seq
	return true
}

// serve checks queued messages with check until ctx ends.
func (q *advisoryQueue) serve(ctx context.Context, check func(seq uint64)) {
	for {
		select {
		case <-ctx.Done():
			return
		case seq := <-q.work:
			check(seq)
			q.mu.Lock()
			delete(q.pending, seq)
			q.mu.Unlock()
		}
	}
}

// stillFor is how long the status of a job said to be exhausted must stay
// unchanged: a running attempt rewrites it every progressInterval.
const stillFor = 3 * progressInterval

func (w *Worker) failExhausted(ctx context.Context, seq uint64) {
	t := w.cfg.topo
	stream, err := w.js.Stream(ctx, t.JobsStream)
	if err != nil {
		w.cfg.log.Warn("max deliveries advisory: stream", zap.Error(err))
		return
	}
	raw, err := stream.GetMsg(ctx, seq)
	if err != nil {
		return // another worker already dealt with it
	}
	spec, _ := jobs.DecodeSpec(raw.Data)
	if spec.ID == "" {
		return // terminated at its first delivery, never exhausted
	}
	log := w.cfg.log.With(zap.String("job_id", spec.ID), zap.String("disk", spec.Disk), zap.Uint64("stream_seq", seq))
	maxDeliver, err := w.exhausted(ctx, spec.ID, seq)
	if err != nil {
		log.Warn("ignoring a max deliveries advisory the job's state does not bear out", zap.Error(err))
		return
	}
	j := &jobRun{spec: spec, attempt: maxDeliver, seq: seq, log: log}
	w.settle(ctx, j, decide(end{attempt: maxDeliver, exhausted: true}, t), nil)
	// The message would otherwise stay in the work queue for good.
	if err := stream.DeleteMsg(ctx, seq); err != nil && !errors.Is(err, context.Canceled) {
		log.Debug("deleting exhausted job", zap.Error(err))
	}
}

// exhausted checks what an advisory claims against facts: the consumer's max
// deliver, the attempt of the job message seq that its status records (every
// attempt writes it as it starts), and that no attempt is alive (it would
// rewrite the status within stillFor). It returns the consumer's max deliver,
// or why the job is not exhausted.
func (w *Worker) exhausted(ctx context.Context, id string, seq uint64) (int, error) {
	t := w.cfg.topo
	cons, err := w.js.Consumer(ctx, t.JobsStream, t.Consumer)
	if err != nil {
		return 0, err
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return 0, err
	}
	maxDeliver := info.Config.MaxDeliver
	st, rev, known, err := w.status.get(ctx, id)
	switch {
	case err != nil:
		return 0, err
	case maxDeliver < 1:
		return 0, errors.New("the consumer delivers without limit")
	case !known || TerminalState(st.State) || (st.Seq != 0 && st.Seq != seq):
		return 0, fmt.Errorf("its status is %q of job message %d", st.State, st.Seq)
	case st.Attempt < maxDeliver:
		return 0, fmt.Errorf("its status is of attempt %d of %d", st.Attempt, maxDeliver)
	}
	sleep(ctx, stillFor)
	if _, now, _, err := w.status.get(ctx, id); err != nil || now != rev {
		return 0, fmt.Errorf("its status changed (a live attempt): %v", err)
	}
	return maxDeliver, nil
}
