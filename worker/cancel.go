package worker

import (
	"context"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// delivery is a running job's entry in Worker.running.
type delivery struct{ cancel context.CancelCauseFunc }

// track lists a running job, so that a cancellation reaches it, until the
// returned function is called.
func (w *Worker) track(id string, cancel context.CancelCauseFunc) (untrack func()) {
	mine := &delivery{cancel: cancel}
	w.mu.Lock()
	w.running[id] = mine
	w.mu.Unlock()
	return func() {
		w.mu.Lock()
		if w.running[id] == mine {
			delete(w.running, id)
		}
		w.mu.Unlock()
	}
}

// watchCancellations cancels running jobs whose id is put in the cancel bucket.
func (w *Worker) watchCancellations(ctx context.Context) {
	for ctx.Err() == nil {
		watcher, err := w.cancels.WatchAll(ctx, jetstream.UpdatesOnly())
		if err != nil {
			sleep(ctx, time.Second)
			continue
		}
		for e := range watcher.Updates() {
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue
			}
			w.mu.Lock()
			if d, ok := w.running[e.Key()]; ok {
				d.cancel(errCancelled)
			}
			w.mu.Unlock()
		}
		watcher.Stop()
	}
}

// cancelRequested reports whether the cancel bucket holds a request for job id.
func (w *Worker) cancelRequested(ctx context.Context, id string) bool {
	_, err := w.cancels.Get(ctx, id)
	return err == nil
}
