package sinks

import (
	"encoding/json"
	"fmt"
	"time"
)

// ManifestVersion is the manifest format this code writes and reads.
const ManifestVersion = 1

// Manifest is the complete index of one backup: every chunk position of the disk
// maps to a chunk id or to zero, so a backup restores on its own whatever happens to
// its parent.
type Manifest struct {
	Version   int               `json:"version"`
	ID        string            `json:"id"`
	Disk      string            `json:"disk"`
	Kind      string            `json:"kind"` // "full" or "incremental"
	Parent    string            `json:"parent,omitempty"`
	Bitmap    string            `json:"bitmap,omitempty"`
	JobID     string            `json:"job_id,omitempty"`
	Labels    map[string]string `json:"labels,omitempty"`
	Started   time.Time         `json:"started"`
	Completed time.Time         `json:"completed"`
	Size      int64             `json:"size"`
	ChunkSize int64             `json:"chunk_size"`
	Stats     BackupStats       `json:"stats"`
	// Chunks has one entry per chunk position: a chunk id in hex, or "" for a chunk
	// that reads as zeroes.
	Chunks []string `json:"chunks"`
}

// BackupStats are the figures of one backup run.
type BackupStats struct {
	// BytesTotal is the disk size.
	BytesTotal int64 `json:"bytes_total"`
	// BytesRead is what was read from the source.
	BytesRead int64 `json:"bytes_read"`
	// BytesWritten is what was uploaded to the repository, after compression.
	BytesWritten int64 `json:"bytes_written"`
	// BytesDeduplicated is plaintext that was read but not uploaded because the
	// repository already had the chunk.
	BytesDeduplicated int64 `json:"bytes_deduplicated"`
	// BytesReused is plaintext taken from the parent without reading (clean chunks).
	BytesReused int64 `json:"bytes_reused"`
	// BytesZero is plaintext stored as zero markers.
	BytesZero int64 `json:"bytes_zero"`
	// BytesResumed is plaintext an earlier, interrupted attempt of the same job
	// stored, taken from its checkpoint without reading.
	BytesResumed      int64   `json:"bytes_resumed,omitempty"`
	ChunksResumed     int     `json:"chunks_resumed,omitempty"`
	ChunksTotal       int     `json:"chunks_total"`
	ChunksUploaded    int     `json:"chunks_uploaded"`
	ChunksDeduped     int     `json:"chunks_deduplicated"`
	ChunksReused      int     `json:"chunks_reused"`
	ChunksZero        int     `json:"chunks_zero"`
	DurationSeconds   float64 `json:"duration_seconds"`
	ReadBytesPerSec   float64 `json:"read_bytes_per_second"`
	StoredBytesPerSec float64 `json:"stored_bytes_per_second,omitempty"`
}

// ChunkLen is the length of the chunk at position i; the last one may be short.
func (m *Manifest) ChunkLen(i int) int64 {
	return min(m.ChunkSize, m.Size-int64(i)*m.ChunkSize)
}

// ChunkCount is the number of chunk positions of a disk.
func ChunkCount(size, chunkSize int64) int {
	return int((size + chunkSize - 1) / chunkSize)
}

func (m *Manifest) validate() error {
	switch {
	case m.Version != ManifestVersion:
		return fmt.Errorf("manifest %s: unsupported version %d", m.ID, m.Version)
	case m.ChunkSize <= 0 || m.Size < 0:
		return fmt.Errorf("manifest %s: bad size %d or chunk size %d", m.ID, m.Size, m.ChunkSize)
	case len(m.Chunks) != ChunkCount(m.Size, m.ChunkSize):
		return fmt.Errorf("manifest %s: %d chunks for %d bytes", m.ID, len(m.Chunks), m.Size)
	}
	for i, c := range m.Chunks {
		if c == "" {
			continue
		}
		if _, err := ParseChunkID(c); err != nil {
			return fmt.Errorf("manifest %s: chunk %d: %w", m.ID, i, err)
		}
	}
	return nil
}

func (m *Manifest) marshal() ([]byte, error) { return json.Marshal(m) }
