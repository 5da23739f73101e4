package jobs

import (
	"context"
	"sync"
	"sync/atomic"

	"golang.org/x/sync/semaphore"

	"github.com/blockferry/blockferry/internal/bigbuf"
	"github.com/blockferry/blockferry/sinks/repository"
)

// Limits bound what one job has in flight.
type Limits struct {
	// Concurrency is the number of chunks in flight (read, hash, compress, store).
	Concurrency int
	// Memory, when set, is the budget the job's chunk buffers come out of, shared
	// with the other jobs of its runner.
	Memory *MemoryBudget
}

func (l Limits) concurrency() int { return max(l.Concurrency, 1) }

// MemoryBudget bounds the buffer memory of the chunks that all jobs of a runner
// have in flight. A chunk waits for room in the budget before it takes its
// buffers, so a worker running several jobs never holds more than the budget in
// chunk buffers, whatever each job's concurrency: jobs slow down instead of
// growing.
type MemoryBudget struct {
	size  int64
	sem   *semaphore.Weighted
	inUse atomic.Int64
	peak  atomic.Int64
}

// NewMemoryBudget makes a budget of size bytes.
func NewMemoryBudget(size int64) *MemoryBudget {
	return &MemoryBudget{size: size, sem: semaphore.NewWeighted(size)}
}

// Size is the budget in bytes.
func (b *MemoryBudget) Size() int64 { return b.size }

// reserve waits until n bytes are free and takes them; the returned function gives
// them back. A reservation larger than the whole budget takes all of it, so that a
// job with chunks larger than the budget still runs, alone. A nil budget reserves
// nothing.
func (b *MemoryBudget) reserve(ctx context.Context, n int64) (func(), error) {
	if b == nil {
		return func() {}, nil
	}
	n = min(n, b.size)
	if err := b.sem.Acquire(ctx, n); err != nil {
		return nil, err
	}
	now := b.inUse.Add(n)
	for p := b.peak.Load(); now > p && !b.peak.CompareAndSwap(p, now); p = b.peak.Load() {
	}
	return func() {
		b.inUse.Add(-n)
		b.sem.Release(n)
	}, nil
}

// What a chunk in flight holds, by job kind, for a chunk size of n bytes.
func backupChunkMemory(n int64) int64  { return n + int64(repository.SealedSize(int(n))) }   // read buffer, sealed object
func restoreChunkMemory(n int64) int64 { return 2*n + int64(repository.SealedSize(int(n))) } // object, plaintext, patch chunk
func verifyChunkMemory(n int64) int64  { return n + int64(repository.SealedSize(int(n))) }   // object, plaintext

// chunkBuffers recycles chunk-sized buffers across the jobs of a process, by size.
var chunkBuffers sync.Map // int64 -> *sync.Pool of *[]byte

// getChunkBuffer returns a buffer of n bytes; putChunkBuffer recycles it.
func getChunkBuffer(n int64) *[]byte {
	p, _ := chunkBuffers.LoadOrStore(n, &sync.Pool{})
	if b, ok := p.(*sync.Pool).Get().(*[]byte); ok {
		return b
	}
	b := bigbuf.Make(int(n), int(n))
	return &b
}

func putChunkBuffer(b *[]byte) {
	if p, ok := chunkBuffers.Load(int64(len(*b))); ok {
		p.(*sync.Pool).Put(b)
	}
}
