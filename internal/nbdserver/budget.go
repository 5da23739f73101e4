package nbdserver

import (
	"context"
	"iter"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"
)

// budget is what the requests of one connection may hold until they are
// answered: at most maxInFlightRequests requests, and at most its memory in
// bytes of buffers and of the lend units its lent reads keep. A request that
// does not fit waits, and with it the reading of further requests.
//
// A lend unit is charged once however many replies hold it, so that a
// sequential reader's many reads of one chunk position cost one position; it is
// given back when the last of them is sent.
type budget struct {
	requests *semaphore.Weighted
	memory   *semaphore.Weighted
	inFlight atomic.Int64 // requests admitted and not done
	lastDone atomic.Int64 // when the last request was done, in Unix nanoseconds

	unit int64 // of the device's lends; 0: nothing is lent
	mu   sync.Mutex
	held map[int64]int // lend unit index: lent replies holding it
}

func newBudget(unit int64) *budget {
	return &budget{
		requests: semaphore.NewWeighted(maxInFlightRequests),
		memory:   semaphore.NewWeighted(lendBudget(unit)),
		unit:     unit,
		held:     map[int64]int{},
	}
}

// lendBudget is the memory a connection may hold: maxInFlightBytes, or what
// one lent READ can hold when that is more (MaxRequest bytes touch at most
// MaxRequest/unit+2 units).
func lendBudget(unit int64) int64 {
	if unit <= 0 {
		return maxInFlightBytes
	}
	return max(maxInFlightBytes, (MaxRequest/unit+2)*unit)
}

// admit waits until req fits the budget and takes its share. An error is the
// end of ctx; what was taken is then left taken, as the connection ends.
func (b *budget) admit(ctx context.Context, req request) error {
	if err := b.requests.Acquire(ctx, 1); err != nil {
		return err
	}
	if err := b.memory.Acquire(ctx, req.weight); err != nil {
		return err
	}
	if req.lent {
		if err := b.memory.Acquire(ctx, b.hold(req)*b.unit); err != nil {
			return err
		}
	}
	b.inFlight.Add(1)
	return nil
}

// done gives back what req took, once its reply is sent and nothing it lent
// is held any more.
func (b *budget) done(req request) {
	if req.lent {
		b.memory.Release(b.drop(req) * b.unit)
	}
	b.memory.Release(req.weight)
	b.requests.Release(1)
	b.lastDone.Store(time.Now().UnixNano())
	b.inFlight.Add(-1)
}

// busy reports whether requests are in progress.
func (b *budget) busy() bool { return b.inFlight.Load() > 0 }

// lastDoneAt is when the last request was done (the Unix epoch if none was).
func (b *budget) lastDoneAt() time.Time { return time.Unix(0, b.lastDone.Load()) }

// hold counts req's reply among the holders of the units it touches and
// returns how many units no reply held before.
func (b *budget) hold(req request) (fresh int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i := range b.units(req) {
		if b.held[i]++; b.held[i] == 1 {
			fresh++
		}
	}
	return fresh
}

// drop ends req's hold on its units and returns how many no reply holds now.
func (b *budget) drop(req request) (freed int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i := range b.units(req) {
		if b.held[i]--; b.held[i] == 0 {
			delete(b.held, i)
			freed++
		}
	}
	return freed
}

// units yields the indexes of the lend units req touches (a lent READ is in
// bounds and not empty).
func (b *budget) units(req request) iter.Seq[int64] {
	return func(yield func(int64) bool) {
		first, last := int64(req.off)/b.unit, (int64(req.off)+int64(req.length)-1)/b.unit
		for i := first; i <= last && yield(i); i++ {
		}
	}
}
