package worker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/blockferry/blockferry/jobs"
)

// Provision creates or updates the streams, the consumer and the buckets. It is
// idempotent, and it leaves streams an operator created alone as long as they
// capture the subjects blockferry needs: their limits are the operator's.
func Provision(ctx context.Context, js jetstream.JetStream, t Topology) error {
	if err := t.validate(); err != nil {
		return err
	}
	streams := []jetstream.StreamConfig{{
		Name:        t.JobsStream,
		Description: "blockferry jobs",
		Subjects:    []string{t.Prefix + ".jobs.>"},
		Retention:   jetstream.WorkQueuePolicy,
		MaxAge:      t.JobsMaxAge,
		MaxMsgSize:  jobs.MaxSpecBytes,
		Replicas:    t.Replicas,
		// A job re-submitted within a day (same id, same Nats-Msg-Id) is dropped.
		Duplicates: 24 * time.Hour,
	}, {
		Name:        t.EventsStream,
		Description: "blockferry job events (CloudEvents)",
		Subjects:    []string{t.Prefix + ".events.>"},
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      t.EventsMaxAge,
		Replicas:    t.Replicas,
		Duplicates:  10 * time.Minute,
	}}
	for _, cfg := range streams {
		if err := ensureStream(ctx, js, cfg); err != nil {
			return err
		}
	}
	_, err := js.CreateOrUpdateConsumer(ctx, t.JobsStream, jetstream.ConsumerConfig{
		Durable:       t.Consumer,
		Description:   "blockferry workers",
		FilterSubject: t.Prefix + ".jobs.>",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       t.AckWait,
		MaxDeliver:    t.MaxDeliver,
		// Workers pull one job at a time when they have room: no prefetching, so
		// the pending count is an honest backlog to scale on.
		MaxAckPending: 10000,
		MaxWaiting:    512,
	})
	if err != nil {
		return fmt.Errorf("consumer %s: %w", t.Consumer, err)
	}
	for _, b := range []jetstream.KeyValueConfig{
		{Bucket: t.StatusBucket, Description: "blockferry job status", History: 1, Replicas: t.Replicas, TTL: t.EventsMaxAge},
		{Bucket: t.CancelBucket, Description: "blockferry cancellation requests", History: 1, Replicas: t.Replicas, TTL: t.EventsMaxAge},
	} {
		// An existing bucket is left as it is: a worker started with other
		// settings (say --replicas 1 against a cluster) must not reshape it.
		if _, err := js.KeyValue(ctx, b.Bucket); err == nil {
			continue
		} else if !errors.Is(err, jetstream.ErrBucketNotFound) {
			return fmt.Errorf("bucket %s: %w", b.Bucket, err)
		}
		if _, err := js.CreateKeyValue(ctx, b); err != nil && !errors.Is(err, jetstream.ErrBucketExists) {
			return fmt.Errorf("bucket %s: %w", b.Bucket, err)
		}
	}
	return nil
}

func ensureStream(ctx context.Context, js jetstream.JetStream, cfg jetstream.StreamConfig) error {
	s, err := js.Stream(ctx, cfg.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		if _, err = js.CreateStream(ctx, cfg); err != nil {
			return fmt.Errorf("create stream %s: %w", cfg.Name, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("stream %s: %w", cfg.Name, err)
	}
	info := s.CachedInfo()
	if info.Config.Retention != cfg.Retention {
		return fmt.Errorf("stream %s exists with retention %s, blockferry needs %s", cfg.Name, info.Config.Retention, cfg.Retention)
	}
	for _, want := range cfg.Subjects {
		found := false
		for _, have := range info.Config.Subjects {
			found = found || have == want
		}
		if !found {
			return fmt.Errorf("stream %s exists but does not capture %q (it has %v)", cfg.Name, want, info.Config.Subjects)
		}
	}
	return nil
}

// provision runs Provision until it succeeds, fails for good, or ctx ends. A
// worker started with its cluster, or while one of its nodes is down, finds
// JetStream unable to place replicated streams for a while: it waits for the
// cluster (not ready meanwhile) rather than exit, as a fleet's workers restarted
// together with their NATS nodes must.
func (w *Worker) provision(ctx context.Context) error {
	delay := 250 * time.Millisecond
	for {
		err := Provision(ctx, w.js, w.cfg.topo)
		if err == nil || !clusterNotReady(err) {
			return err
		}
		w.cfg.log.Warn("provisioning: the NATS cluster cannot place the streams yet; retrying",
			zap.Error(err), zap.Duration("in", delay))
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (waiting for the cluster: %w)", ctx.Err(), err)
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second)
	}
}

// JetStream API error codes of a cluster that is forming or missing a node.
const (
	jsErrClusterNoPeers   jetstream.ErrorCode = 10005 // no suitable peers for placement
	jsErrClusterNotAvail  jetstream.ErrorCode = 10008 // JetStream system temporarily unavailable
	jsErrClusterNotLeader jetstream.ErrorCode = 10009 // the cluster can not handle the request (an election)
)

// clusterNotReady reports whether a provisioning error is one the cluster
// outgrows: no peers to place replicas on, no meta leader yet, or no answer.
func clusterNotReady(err error) bool {
	if apiErr, ok := errors.AsType[*jetstream.APIError](err); ok {
		switch apiErr.ErrorCode {
		case jsErrClusterNoPeers, jsErrClusterNotAvail, jsErrClusterNotLeader:
			return true
		}
		return false
	}
	return errors.Is(err, nats.ErrTimeout) || errors.Is(err, nats.ErrNoResponders) || errors.Is(err, context.DeadlineExceeded)
}
