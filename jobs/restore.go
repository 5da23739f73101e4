package jobs

import (
	"context"
	"fmt"
	"time"

	"github.com/blockferry/blockferry/internal/safe"

	"golang.org/x/sync/errgroup"

	"github.com/blockferry/blockferry/backends"
	"github.com/blockferry/blockferry/sinks/repository"
)

// RestoreStats are the figures of one restore.
type RestoreStats struct {
	Backup       string `json:"backup"`
	BytesTotal   int64  `json:"bytes_total"`
	BytesWritten int64  `json:"bytes_written"`
	BytesZero    int64  `json:"bytes_zero"`
	// BytesFetched is the part of the disk whose bytes came from stored chunks
	// (not from zero markers).
	BytesFetched    int64   `json:"bytes_fetched"`
	DurationSeconds float64 `json:"duration_seconds"`
}

// Restore writes backup id into tgt. Every chunk is checked against its id before it
// is written: a corrupt or missing chunk fails the restore, it is never written.
func Restore(ctx context.Context, repo *repository.Repository, m *repository.Manifest, tgt backends.Target, lim Limits, progress *Progress) (RestoreStats, error) {
	if progress == nil {
		progress = NewProgress()
	}
	start := time.Now()
	progress.bytesTotal.Store(m.Size)
	r := &restoreRun{
		m: m, positions: repo.PositionReader(m, repository.PatchCacheSize), tgt: tgt,
		limits: lim, progress: progress, bufs: make(chan *repository.PositionBuffers, lim.concurrency()),
	}
	if err := r.run(ctx); err != nil {
		return RestoreStats{}, err
	}
	if err := tgt.Flush(ctx); err != nil {
		return RestoreStats{}, fmt.Errorf("flush: %w", err)
	}
	return RestoreStats{
		Backup: m.ID, BytesTotal: m.Size, BytesWritten: progress.bytesWritten.Load(), BytesZero: progress.bytesZero.Load(),
		BytesFetched: progress.bytesRead.Load(), DurationSeconds: time.Since(start).Seconds(),
	}, nil
}

// restoreRun is one restore in progress. Its progress counts what it fetched
// (bytesRead), wrote and zeroed, for its monitor and its figures.
type restoreRun struct {
	m         *repository.Manifest
	positions *repository.PositionReader
	tgt       backends.Target
	limits    Limits
	progress  *Progress
	// Buffers are recycled: fresh 4 MiB buffers cost more in page faults than
	// decompressing into them. A free list of one set per position in flight, not
	// a sync.Pool, which drops its buffers at every garbage collection.
	bufs chan *repository.PositionBuffers
}

// run restores every chunk position, some at once. Runs of positions that read
// as zeroes become one zero request.
func (r *restoreRun) run(ctx context.Context) error {
	m := r.m
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(r.limits.concurrency())
	for i := 0; i < len(m.Chunks) && gctx.Err() == nil; i++ {
		if !m.ReadsAsZero(i) {
			safe.Go(g, func() error { return r.position(gctx, i) })
			continue
		}
		j := i
		for j+1 < len(m.Chunks) && m.ReadsAsZero(j+1) {
			j++
		}
		off := int64(i) * m.ChunkSize
		n := int64(j)*m.ChunkSize + m.ChunkLen(j) - off
		i = j
		safe.Go(g, func() error { return r.zero(gctx, off, n) })
	}
	if err := g.Wait(); err != nil {
		return err
	}
	return ctx.Err()
}

// zero makes the n bytes at off, positions that read as zeroes, zeroes.
func (r *restoreRun) zero(ctx context.Context, off, n int64) error {
	if err := r.tgt.Zero(ctx, off, n); err != nil {
		return fmt.Errorf("zero %d bytes at %d: %w", n, off, err)
	}
	r.progress.bytesZero.Add(n)
	r.progress.bytesDone.Add(n)
	return nil
}

// position reads the content of chunk position i from the repository and writes
// it, leaving its runs of zeroes sparse.
func (r *restoreRun) position(ctx context.Context, i int) error {
	release, err := r.limits.Memory.reserve(ctx, restoreChunkMemory(r.m.ChunkSize))
	if err != nil {
		return err
	}
	defer release()
	var buf *repository.PositionBuffers
	select {
	case buf = <-r.bufs:
	default:
		buf = &repository.PositionBuffers{}
	}
	defer func() { r.bufs <- buf }() // never blocks: at most concurrency() sets exist
	data, fetched, err := r.positions.Read(ctx, i, buf)
	if err != nil {
		return err
	}
	r.progress.bytesRead.Add(fetched)
	written, zeroed, err := writeSparse(ctx, r.tgt, data, int64(i)*r.m.ChunkSize)
	if err != nil {
		return err
	}
	r.progress.bytesWritten.Add(written)
	r.progress.bytesZero.Add(zeroed)
	r.progress.bytesDone.Add(r.m.ChunkLen(i))
	return nil
}

// sparseBlock is the granularity at which a restored chunk's zero runs are left as
// holes (or sent as WRITE_ZEROES) instead of written: a chunk that holds a little
// data and zeroes otherwise restores to as little space as the original took.
const sparseBlock = 64 << 10

// writeSparse writes data at off, turning runs of zero blocks into Zero requests.
// It returns the bytes written and the bytes zeroed.
func writeSparse(ctx context.Context, tgt backends.Target, data []byte, off int64) (written, zeroed int64, err error) {
	for start := 0; start < len(data); {
		end := min(start+sparseBlock, len(data))
		zero := isZero(data[start:end])
		for end < len(data) {
			next := min(end+sparseBlock, len(data))
			if isZero(data[end:next]) != zero {
				break
			}
			end = next
		}
		at, n := off+int64(start), int64(end-start)
		if zero {
			if err := tgt.Zero(ctx, at, n); err != nil {
				return written, zeroed, fmt.Errorf("zero %d bytes at %d: %w", n, at, err)
			}
			zeroed += n
		} else {
			if _, err := tgt.WriteAt(data[start:end], at); err != nil {
				return written, zeroed, fmt.Errorf("write %d bytes at %d: %w", n, at, err)
			}
			written += n
		}
		start = end
	}
	return written, zeroed, nil
}
