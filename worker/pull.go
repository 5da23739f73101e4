package worker

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
)

// pull takes a job whenever one of the worker's slots is free and runs it under
// jobsCtx, until ctx ends. It returns the group of the jobs still running.
func (w *Worker) pull(ctx, jobsCtx context.Context, cons jetstream.Consumer) *sync.WaitGroup {
	slots := make(chan struct{}, w.cfg.slots)
	var running sync.WaitGroup
	for ctx.Err() == nil {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			continue
		}
		msg := w.take(ctx, cons)
		if msg == nil {
			<-slots
			continue
		}
		running.Go(func() {
			defer func() { <-slots }()
			w.handle(jobsCtx, msg)
		})
	}
	return &running
}

// take fetches one job. It returns nil when none came, when the fetch failed
// (after a pause, so that a broken connection is not hammered) and when the
// worker was told to stop meanwhile.
func (w *Worker) take(ctx context.Context, cons jetstream.Consumer) jetstream.Msg {
	msg, err := fetchOne(ctx, cons)
	if err != nil {
		if ctx.Err() == nil {
			w.setFetchErr(err)
			w.cfg.log.Warn("fetching a job", zap.Error(err))
			sleep(ctx, time.Second)
		}
		return nil
	}
	w.setFetchErr(nil)
	if msg != nil && ctx.Err() != nil {
		// Taken as the worker was told to stop: hand it straight back.
		_ = msg.Nak()
		return nil
	}
	return msg
}

// fetchOne pulls at most one job, waiting a few seconds for one. The wait ends
// when ctx does: a stopping worker must not take a job in the meantime.
func fetchOne(ctx context.Context, cons jetstream.Consumer) (jetstream.Msg, error) {
	fetchCtx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	batch, err := cons.Fetch(1, jetstream.FetchContext(fetchCtx))
	if err != nil {
		return nil, err
	}
	for m := range batch.Messages() {
		return m, nil
	}
	if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) &&
		!errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
		return nil, err
	}
	return nil, ctx.Err()
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
