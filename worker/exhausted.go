package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

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
// it, and the status bucket lets only one of them report it.
func (w *Worker) watchExhausted(ctx context.Context, nc *nats.Conn) (func(), error) {
	t := w.cfg.topo
	subject := "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES." + t.JobsStream + "." + t.Consumer
	sub, err := nc.Subscribe(subject, func(m *nats.Msg) {
		var adv maxDeliveriesAdvisory
		if err := json.Unmarshal(m.Data, &adv); err != nil || adv.StreamSeq == 0 {
			return
		}
		go w.failExhausted(ctx, adv.StreamSeq)
	})
	if err != nil {
		return nil, fmt.Errorf("subscribe to %s: %w", subject, err)
	}
	return func() { _ = sub.Unsubscribe() }, nil
}

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
	if spec.ID != "" {
		j := &jobRun{spec: spec, attempt: t.MaxDeliver, log: w.cfg.log.With(zap.String("job_id", spec.ID), zap.String("disk", spec.Disk))}
		w.settle(ctx, j, decide(end{attempt: t.MaxDeliver, exhausted: true}, t), nil)
	}
	// The message would otherwise stay in the work queue for good.
	if err := stream.DeleteMsg(ctx, seq); err != nil && !errors.Is(err, context.Canceled) {
		w.cfg.log.Debug("deleting exhausted job", zap.Uint64("seq", seq), zap.Error(err))
	}
}
