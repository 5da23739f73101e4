package repository

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"sync"

	"github.com/blockferry/blockferry/internal/safe"

	"golang.org/x/sync/errgroup"
)

// CheckOptions tune Check.
type CheckOptions struct {
	// ReadData is the fraction (0 to 1) of the referenced chunks that are read and
	// re-hashed; 0 only checks that they exist.
	ReadData float64
}

// CheckReport is what Check found. OK is true when nothing is wrong.
type CheckReport struct {
	OK            bool        `json:"ok"`
	Backups       int         `json:"backups"`
	BadManifests  []BadObject `json:"bad_manifests,omitempty"`
	ChunksStored  int         `json:"chunks_stored"`
	ChunksNamed   int         `json:"chunks_referenced"`
	MissingChunks []string    `json:"missing_chunks,omitempty"` // "<chunk> (backup <id>)"
	ChunksRead    int         `json:"chunks_read"`
	CorruptChunks []string    `json:"corrupt_chunks,omitempty"`
}

// maxReported bounds the missing and corrupt chunks a report names.
const maxReported = 1000

// Check proves a repository: every manifest decodes, every chunk one names (base
// or patch) is stored, and with ReadData a sample of them reads back and matches
// its id. Memory: the stored and the referenced chunk ids, 32 bytes each, and
// one manifest per reader.
func (r *Repository) Check(ctx context.Context, o CheckOptions) (*CheckReport, error) {
	rep := &CheckReport{}
	var stored idSet
	if _, err := r.chunkSizes(ctx, func(id ChunkID, _ int64) { stored.add(id) }); err != nil {
		return nil, fmt.Errorf("check: %w", err)
	}
	stored.compact()
	rep.ChunksStored = stored.len()
	var named idSet
	err := r.eachManifest(ctx, func(m *Manifest) {
		rep.Backups++
		for h := range m.ChunkNeeds() {
			id, _ := ParseChunkID(h) // validated when the manifest was read
			named.add(id)
			if !stored.has(id) && len(rep.MissingChunks) < maxReported {
				rep.MissingChunks = append(rep.MissingChunks, fmt.Sprintf("%s (backup %s)", h, m.ID))
			}
		}
	}, func(b BadObject) { rep.BadManifests = append(rep.BadManifests, b) })
	if err != nil {
		return nil, fmt.Errorf("check: %w", err)
	}
	named.compact()
	rep.ChunksNamed = named.len()
	if o.ReadData > 0 {
		if err := r.readSample(ctx, &named, &stored, o.ReadData, rep); err != nil {
			return nil, err
		}
	}
	rep.OK = len(rep.BadManifests) == 0 && len(rep.MissingChunks) == 0 && len(rep.CorruptChunks) == 0
	return rep, nil
}

// readSample reads the stored chunks among named whose id falls in the first
// fraction of the id space: ids are uniform hashes, so that is a fair sample, and
// the same one each time (re-running a check re-reads what failed).
func (r *Repository) readSample(ctx context.Context, named, stored *idSet, fraction float64, rep *CheckReport) error {
	limit := uint64(math.MaxUint64)
	if fraction < 1 {
		limit = uint64(fraction * math.MaxUint64)
	}
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for _, id := range named.ids {
		if binary.BigEndian.Uint64(id[:8]) > limit || !stored.has(id) {
			continue
		}
		safe.Go(g, func() error {
			_, err := r.GetChunk(gctx, id, nil)
			mu.Lock()
			defer mu.Unlock()
			rep.ChunksRead++
			if err != nil && gctx.Err() == nil && len(rep.CorruptChunks) < maxReported {
				rep.CorruptChunks = append(rep.CorruptChunks, err.Error())
			}
			return gctx.Err()
		})
	}
	if err := g.Wait(); err != nil {
		return fmt.Errorf("check: %w", err)
	}
	return nil
}
