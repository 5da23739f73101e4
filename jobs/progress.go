package jobs

import (
	"sync/atomic"
	"time"

	"github.com/blockferry/blockferry/sinks/repository"
)

// Progress counts what a running job has done. The engine adds to it from many
// goroutines; a monitor (the worker's event publisher, the CLI's progress bar) reads
// snapshots whenever it likes. The figures of the finished job (a backup's
// statistics, a restore's, a verify's report) are read from the same counters, so
// that each thing a job does is counted once and what it showed while it ran and
// what it reports at the end agree. A Progress counts one job: each takes a fresh
// one.
type Progress struct {
	started time.Time
	// In snapshots.
	bytesTotal        atomic.Int64
	bytesDone         atomic.Int64
	bytesRead         atomic.Int64
	bytesWritten      atomic.Int64
	bytesDeduplicated atomic.Int64
	// Only in the figures of the finished job. bytesZero is what a backup stores
	// as zeroes, or what a restore zeroes; the others are a backup's.
	bytesZero      atomic.Int64
	bytesReused    atomic.Int64
	bytesResumed   atomic.Int64
	chunksUploaded atomic.Int64
	chunksDeduped  atomic.Int64
	chunksReused   atomic.Int64
	chunksZero     atomic.Int64
	chunksResumed  atomic.Int64
	chunksPatched  atomic.Int64

	// export is the URI of a serve job's export, once it accepts clients;
	// exported is closed then.
	export   atomic.Pointer[string]
	exported chan struct{}
}

// NewProgress starts counting now.
func NewProgress() *Progress { return &Progress{started: time.Now(), exported: make(chan struct{})} }

// setExport records the URI of the export a serve job set up, once.
func (p *Progress) setExport(uri string) {
	if p.export.CompareAndSwap(nil, &uri) {
		close(p.exported)
	}
}

// Exported is closed once a serve job's export accepts clients (Snapshot's
// Export says where): a monitor tells at once, not at its next tick.
func (p *Progress) Exported() <-chan struct{} { return p.exported }

// ProgressSnapshot is a consistent-enough reading of a Progress.
type ProgressSnapshot struct {
	BytesTotal        int64   `json:"bytes_total"`
	BytesDone         int64   `json:"bytes_done"`
	BytesRead         int64   `json:"bytes_read"`
	BytesWritten      int64   `json:"bytes_written"`
	BytesDeduplicated int64   `json:"bytes_deduplicated"`
	RateBytesPerSec   float64 `json:"rate_bytes_per_second"`
	ETASeconds        float64 `json:"eta_seconds"`
	// Export is the URI of a serve job's export (bytes_done: the bytes its
	// clients read).
	Export string `json:"export,omitempty"`
}

// Snapshot reads the counters and derives rate and ETA from the time since start.
func (p *Progress) Snapshot() ProgressSnapshot {
	s := ProgressSnapshot{
		BytesTotal:        p.bytesTotal.Load(),
		BytesDone:         p.bytesDone.Load(),
		BytesRead:         p.bytesRead.Load(),
		BytesWritten:      p.bytesWritten.Load(),
		BytesDeduplicated: p.bytesDeduplicated.Load(),
	}
	if uri := p.export.Load(); uri != nil {
		s.Export = *uri
	}
	if el := time.Since(p.started).Seconds(); el > 0 {
		s.RateBytesPerSec = float64(s.BytesDone) / el
	}
	if s.RateBytesPerSec > 0 && s.BytesTotal > s.BytesDone {
		s.ETASeconds = float64(s.BytesTotal-s.BytesDone) / s.RateBytesPerSec
	}
	return s
}

// What a backup counts, besides the bytes it reads and the positions it is done
// with.

// addStored counts a chunk of n plaintext bytes put into the repository.
func (p *Progress) addStored(n int64, res repository.PutResult) {
	if res.Stored == 0 {
		p.bytesDeduplicated.Add(n)
		p.chunksDeduped.Add(1)
		return
	}
	p.bytesWritten.Add(int64(res.Stored))
	p.chunksUploaded.Add(1)
}

// addZero counts a position of n bytes stored as a zero marker.
func (p *Progress) addZero(n int64) {
	p.bytesZero.Add(n)
	p.chunksZero.Add(1)
}

// addReused counts a position of n bytes taken from the parent unread.
func (p *Progress) addReused(n int64) {
	p.bytesReused.Add(n)
	p.chunksReused.Add(1)
}

// addResumed counts a position of n bytes taken from the checkpoint of an earlier
// attempt.
func (p *Progress) addResumed(n int64) {
	p.bytesResumed.Add(n)
	p.chunksResumed.Add(1)
}

// addPatched counts a patched position, of which zero bytes are now patches of
// zeroes and reused bytes stay as the parent has them.
func (p *Progress) addPatched(zero, reused int64) {
	p.bytesZero.Add(zero)
	p.bytesReused.Add(reused)
	p.chunksPatched.Add(1)
}

// backupStats are the statistics of backup m, which this Progress counted.
func (p *Progress) backupStats(m *repository.Manifest) repository.BackupStats {
	d := m.Completed.Sub(m.Started).Seconds()
	s := repository.BackupStats{
		BytesTotal: m.Size, BytesRead: p.bytesRead.Load(), BytesWritten: p.bytesWritten.Load(),
		BytesDeduplicated: p.bytesDeduplicated.Load(), BytesReused: p.bytesReused.Load(), BytesZero: p.bytesZero.Load(),
		ChunksTotal: len(m.Chunks), ChunksUploaded: int(p.chunksUploaded.Load()), ChunksDeduped: int(p.chunksDeduped.Load()),
		ChunksReused: int(p.chunksReused.Load()), ChunksZero: int(p.chunksZero.Load()), DurationSeconds: d,
		BytesResumed: p.bytesResumed.Load(), ChunksResumed: int(p.chunksResumed.Load()), ChunksPatched: int(p.chunksPatched.Load()),
	}
	if d > 0 {
		s.ReadBytesPerSec = float64(s.BytesRead) / d
		s.StoredBytesPerSec = float64(s.BytesTotal) / d
	}
	return s
}
