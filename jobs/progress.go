package jobs

import (
	"sync/atomic"
	"time"
)

// Progress counts what a running job has done. The engine adds to it from many
// goroutines; a monitor (the worker's event publisher, the CLI's progress bar) reads
// snapshots whenever it likes.
type Progress struct {
	started           time.Time
	bytesTotal        atomic.Int64
	bytesDone         atomic.Int64
	bytesRead         atomic.Int64
	bytesWritten      atomic.Int64
	bytesDeduplicated atomic.Int64
}

// NewProgress starts counting now.
func NewProgress() *Progress { return &Progress{started: time.Now()} }

// ProgressSnapshot is a consistent-enough reading of a Progress.
type ProgressSnapshot struct {
	BytesTotal        int64   `json:"bytes_total"`
	BytesDone         int64   `json:"bytes_done"`
	BytesRead         int64   `json:"bytes_read"`
	BytesWritten      int64   `json:"bytes_written"`
	BytesDeduplicated int64   `json:"bytes_deduplicated"`
	RateBytesPerSec   float64 `json:"rate_bytes_per_second"`
	ETASeconds        float64 `json:"eta_seconds"`
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
	if el := time.Since(p.started).Seconds(); el > 0 {
		s.RateBytesPerSec = float64(s.BytesDone) / el
	}
	if s.RateBytesPerSec > 0 && s.BytesTotal > s.BytesDone {
		s.ETASeconds = float64(s.BytesTotal-s.BytesDone) / s.RateBytesPerSec
	}
	return s
}
