package worker

import (
	"context"
	"sync"
	"testing"
	"time"
)

// TestAdvisoryQueue: an advisory is queued once however often it comes, a full
// queue refuses new ones without blocking, and every queued one is checked once,
// by at most advisoryCheckers goroutines.
func TestAdvisoryQueue(t *testing.T) {
	q := newAdvisoryQueue()
	for seq := range uint64(maxAdvisoriesQueued) {
		for range 3 {
			if !q.add(seq + 1) {
				t.Fatalf("advisory %d refused with %d queued", seq+1, len(q.pending))
			}
		}
	}
	if q.add(maxAdvisoriesQueued + 1) {
		t.Fatal("a full queue took one more advisory")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	checked := map[uint64]int{}
	var wg sync.WaitGroup
	wg.Add(maxAdvisoriesQueued)
	for range advisoryCheckers {
		go q.serve(ctx, func(seq uint64) {
			mu.Lock()
			checked[seq]++
			mu.Unlock()
			wg.Done()
		})
	}
	wg.Wait()
	for seq := range uint64(maxAdvisoriesQueued) {
		if checked[seq+1] != 1 {
			t.Fatalf("advisory %d checked %d times", seq+1, checked[seq+1])
		}
	}
	for empty := false; !empty; time.Sleep(time.Millisecond) {
		q.mu.Lock()
		empty = len(q.pending) == 0
		q.mu.Unlock()
	}
	wg.Add(1)
	if !q.add(maxAdvisoriesQueued + 1) {
		t.Fatal("the queue refuses advisories after it emptied")
	}
	wg.Wait()
}
