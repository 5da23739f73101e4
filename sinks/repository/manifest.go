package repository

import (
	"cmp"
	"encoding/json"
	"fmt"
	"slices"
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
	// Patches overlays ranges of some chunk positions with bytes of other chunks:
	// position i reads as Chunks[i] with each of Patches[i] laid over it. An
	// incremental backup writes them where little of a position changed, so that it
	// reads and stores only the changed blocks instead of the whole chunk.
	Patches map[int][]Patch `json:"patches,omitempty"`

	// Checkpoint is the checkpoint the backup starts, as its job named it: an
	// incremental that counts from it (its since_checkpoint) may take this backup
	// as its parent.
	Checkpoint string `json:"checkpoint,omitempty"`
	// FallbackReason says why a backup its job asked to be incremental is a full
	// one: its chain was broken (bitmap_missing, parent_missing, disk_resized,
	// checkpoint_mismatch).
	FallbackReason string `json:"fallback_reason,omitempty"`
}

// Patch replaces Length bytes at Offset of a chunk position with the bytes at
// ChunkOffset of chunk Chunk, or with zeroes when Chunk is "".
type Patch struct {
	Offset      int64  `json:"offset"`
	Length      int64  `json:"length"`
	Chunk       string `json:"chunk,omitempty"`
	ChunkOffset int64  `json:"chunk_offset,omitempty"`
}

// End is the offset in the chunk position just past the patch.
func (p Patch) End() int64 { return p.Offset + p.Length }

// ReadsAsZero reports whether chunk position i holds only zeroes by construction:
// no base chunk and no patch with data.
func (m *Manifest) ReadsAsZero(i int) bool {
	if m.Chunks[i] != "" {
		return false
	}
	for _, p := range m.Patches[i] {
		if p.Chunk != "" {
			return false
		}
	}
	return true
}

// OverlayPatches lays the patches top over the patches base of one chunk
// position: where they overlap, top wins. Both are sorted and non-overlapping, and
// so is the result, in which the ranges of base that top covers are cut away.
func OverlayPatches(base, top []Patch) []Patch {
	out := make([]Patch, 0, len(base)+len(top))
	t0 := 0 // first top patch that may overlap the current base patch
	for _, b := range base {
		for t0 < len(top) && top[t0].End() <= b.Offset {
			t0++
		}
		pos := b.Offset
		for _, t := range top[t0:] {
			if t.Offset >= b.End() {
				break
			}
			if t.Offset > pos {
				out = append(out, b.slice(pos, t.Offset))
			}
			pos = max(pos, t.End())
		}
		if pos < b.End() {
			out = append(out, b.slice(pos, b.End()))
		}
	}
	out = append(out, top...)
	slices.SortFunc(out, func(a, b Patch) int { return cmp.Compare(a.Offset, b.Offset) })
	// Neighbours that continue each other become one patch.
	merged := out[:0]
	for _, p := range out {
		if n := len(merged); n > 0 {
			q := &merged[n-1]
			if q.End() == p.Offset && q.Chunk == p.Chunk && (p.Chunk == "" || q.ChunkOffset+q.Length == p.ChunkOffset) {
				q.Length += p.Length
				continue
			}
		}
		merged = append(merged, p)
	}
	return merged
}

// slice is the part [from, to) of p, offsets in the chunk position.
func (p Patch) slice(from, to int64) Patch {
	q := Patch{Offset: from, Length: to - from, Chunk: p.Chunk}
	if p.Chunk != "" {
		q.ChunkOffset = p.ChunkOffset + from - p.Offset
	}
	return q
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
	BytesResumed int64 `json:"bytes_resumed,omitempty"`
	// The chunk positions of the disk (ChunksTotal) are each resumed, reused from
	// the parent, a zero marker, patched (only their changed blocks read, see
	// Manifest.Patches) or stored whole.
	ChunksTotal   int `json:"chunks_total"`
	ChunksResumed int `json:"chunks_resumed,omitempty"`
	ChunksReused  int `json:"chunks_reused"`
	ChunksZero    int `json:"chunks_zero"`
	ChunksPatched int `json:"chunks_patched,omitempty"`
	// ChunksUploaded and ChunksDeduped count chunk objects, uploaded or found
	// already stored: the positions stored whole, and the chunks holding the
	// changed blocks of patched positions (one for up to 64 positions).
	ChunksUploaded    int     `json:"chunks_uploaded"`
	ChunksDeduped     int     `json:"chunks_deduplicated"`
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
	case !ValidChunkSize(m.ChunkSize) || m.Size < 0:
		return fmt.Errorf("manifest %s: bad size %d or chunk size %d", m.ID, m.Size, m.ChunkSize)
	}
	if err := CheckDiskSize(m.Size, m.ChunkSize); err != nil {
		return fmt.Errorf("manifest %s: %w", m.ID, err)
	}
	switch {
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
	for i, ps := range m.Patches {
		if i < 0 || i >= len(m.Chunks) {
			return fmt.Errorf("manifest %s: patches for chunk position %d of %d", m.ID, i, len(m.Chunks))
		}
		if err := validPatches(ps, m.ChunkLen(i)); err != nil {
			return fmt.Errorf("manifest %s: chunk %d: %w", m.ID, i, err)
		}
	}
	return nil
}

// validPatches checks that ps are sorted, do not overlap and stay within a chunk
// position of n bytes.
func validPatches(ps []Patch, n int64) error {
	if len(ps) == 0 || len(ps) > MaxPatchesPerPosition {
		return fmt.Errorf("%d patches: want 1 to %d", len(ps), MaxPatchesPerPosition)
	}
	end := int64(0)
	for _, p := range ps {
		switch {
		// Written so that no sum overflows, whatever a damaged manifest holds.
		case p.Length <= 0 || p.Offset < end || p.Offset > n || p.Length > n-p.Offset ||
			p.ChunkOffset < 0 || p.ChunkOffset > MaxChunkSize-p.Length:
			return fmt.Errorf("patch %+v: out of order, overlapping or out of range", p)
		case p.Chunk == "" && p.ChunkOffset != 0:
			return fmt.Errorf("patch %+v: a zero patch has no chunk offset", p)
		}
		if p.Chunk != "" {
			if _, err := ParseChunkID(p.Chunk); err != nil {
				return err
			}
		}
		end = p.End()
	}
	return nil
}

func (m *Manifest) marshal() ([]byte, error) { return json.Marshal(m) }

// checkHeaderSize refuses a manifest whose fields other than the per-position
// ones take more than a reader grants them (labels are what could).
func (m *Manifest) checkHeaderSize() error {
	header := *m
	header.Chunks, header.Patches = nil, nil
	data, err := json.Marshal(&header)
	if err != nil {
		return err
	}
	if len(data) > headerBudget {
		return fmt.Errorf("manifest %s: %d bytes of JSON besides its chunks and patches, more than the %d a reader accepts", m.ID, len(data), headerBudget)
	}
	return nil
}

// ChunkNeed is what a backup needs of a chunk's length: exactly Length for a base
// chunk, at least Length for one that only patches refer to.
type ChunkNeed struct {
	// Length is the chunk's plaintext length (exact) or its minimum.
	Length int64
	exact  bool
	// short is set for a base chunk that patches take more bytes from than the
	// position's Length: no content of it can be right.
	short bool
}

// Fits reports whether a chunk of n plaintext bytes can serve the backup.
func (s ChunkNeed) Fits(n int64) bool {
	return !s.short && (n == s.Length || !s.exact && n > s.Length)
}

// ChunkNeeds lists every chunk the backup names, base chunks and those that
// only patches refer to, with the length it needs of each.
func (m *Manifest) ChunkNeeds() map[string]ChunkNeed {
	sizes := map[string]ChunkNeed{}
	for i, c := range m.Chunks {
		if c != "" {
			sizes[c] = ChunkNeed{Length: m.ChunkLen(i), exact: true}
		}
	}
	for _, ps := range m.Patches {
		for _, p := range ps {
			if p.Chunk == "" {
				continue
			}
			s := sizes[p.Chunk]
			if s.exact {
				// A base chunk that patches also take from: it must hold their bytes too.
				if p.ChunkOffset+p.Length > s.Length {
					s.short = true
					sizes[p.Chunk] = s
				}
				continue
			}
			sizes[p.Chunk] = ChunkNeed{Length: max(s.Length, p.ChunkOffset+p.Length)}
		}
	}
	return sizes
}
