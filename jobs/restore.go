package jobs

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

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
	var written, zero, fetched atomic.Int64
	// Decompression buffers are recycled: fresh 4 MiB buffers cost more in page
	// faults than decompressing into them.
	var bufs sync.Pool
	positions := repo.PositionReader(m, repository.PatchCacheSize)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(lim.concurrency())
	for i := 0; i < len(m.Chunks) && gctx.Err() == nil; i++ {
		off, n := int64(i)*m.ChunkSize, m.ChunkLen(i)
		// Runs of zero chunks become one zero request.
		if m.ReadsAsZero(i) {
			j := i
			for j+1 < len(m.Chunks) && m.ReadsAsZero(j+1) {
				j++
			}
			n = int64(j)*m.ChunkSize + m.ChunkLen(j) - off
			i = j
			g.Go(func() error {
				if err := tgt.Zero(gctx, off, n); err != nil {
					return fmt.Errorf("zero %d bytes at %d: %w", n, off, err)
				}
				zero.Add(n)
				progress.bytesDone.Add(n)
				return nil
			})
			continue
		}
		g.Go(func() error {
			release, err := lim.Memory.reserve(gctx, restoreChunkMemory(m.ChunkSize))
			if err != nil {
				return err
			}
			defer release()
			buf, _ := bufs.Get().(*repository.PositionBuffers)
			if buf == nil {
				buf = &repository.PositionBuffers{}
			}
			defer bufs.Put(buf)
			data, got, err := positions.Read(gctx, i, buf)
			if err != nil {
				return err
			}
			fetched.Add(got)
			progress.bytesRead.Add(got)
			w, z, err := writeSparse(gctx, tgt, data, off)
			if err != nil {
				return err
			}
			written.Add(w)
			zero.Add(z)
			progress.bytesWritten.Add(w)
			progress.bytesDone.Add(n)
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return RestoreStats{}, err
	}
	if err := ctx.Err(); err != nil {
		return RestoreStats{}, err
	}
	if err := tgt.Flush(ctx); err != nil {
		return RestoreStats{}, fmt.Errorf("flush: %w", err)
	}
	return RestoreStats{
		Backup: m.ID, BytesTotal: m.Size, BytesWritten: written.Load(), BytesZero: zero.Load(),
		BytesFetched: fetched.Load(), DurationSeconds: time.Since(start).Seconds(),
	}, nil
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
