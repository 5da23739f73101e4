package repository

import (
	"context"
	"fmt"
)

// DiskStats are the figures of the backups of one disk (or of all of them).
type DiskStats struct {
	Backups int   `json:"backups"`
	Logical int64 `json:"logical_bytes"` // sum of the backups' disk sizes
	// Stored is what the chunks these backups name take in the store, each
	// chunk counted once.
	Stored int64 `json:"stored_bytes"`
	Chunks int   `json:"chunks"`
	// DedupRatio is Logical / Stored (zero positions count as logical bytes).
	DedupRatio float64 `json:"dedup_ratio"`
}

// RepositoryStats are Stats' figures.
type RepositoryStats struct {
	DiskStats
	// StoredTotal counts every chunk stored, also those no backup names (until
	// a prune collects them).
	StoredTotal  int64                 `json:"stored_bytes_total"`
	ChunksTotal  int                   `json:"chunks_total"`
	Disks        map[string]*DiskStats `json:"disks"`
	BadManifests []BadObject           `json:"bad_manifests,omitempty"`
}

// Stats counts backups and bytes, for the disk given or for all. Memory: the
// stored chunk ids with their sizes (40 bytes each) and the referenced ids of
// each disk (32 bytes each).
func (r *Repository) Stats(ctx context.Context, disk string) (*RepositoryStats, error) {
	st := &RepositoryStats{Disks: map[string]*DiskStats{}}
	sizes := map[ChunkID]int64{}
	if _, err := r.chunkSizes(ctx, func(id ChunkID, n int64) { sizes[id] = n; st.StoredTotal += n }); err != nil {
		return nil, fmt.Errorf("stats: %w", err)
	}
	st.ChunksTotal = len(sizes)
	all := &idSet{}
	perDisk := map[string]*idSet{}
	err := r.eachManifest(ctx, func(m *Manifest) {
		if disk != "" && m.Disk != disk {
			return
		}
		d := st.Disks[m.Disk]
		if d == nil {
			d, perDisk[m.Disk] = &DiskStats{}, &idSet{}
			st.Disks[m.Disk] = d
		}
		d.Backups++
		d.Logical += m.Size
		st.Backups++
		st.Logical += m.Size
		perDisk[m.Disk].addManifest(m.Chunks, m.Patches)
		all.addManifest(m.Chunks, m.Patches)
	}, func(b BadObject) { st.BadManifests = append(st.BadManifests, b) })
	if err != nil {
		return nil, fmt.Errorf("stats: %w", err)
	}
	for name, ids := range perDisk {
		st.Disks[name].count(ids, sizes)
	}
	st.count(all, sizes)
	return st, nil
}

func (d *DiskStats) count(ids *idSet, sizes map[ChunkID]int64) {
	ids.compact()
	d.Chunks = ids.len()
	for _, id := range ids.ids {
		d.Stored += sizes[id]
	}
	if d.Stored > 0 {
		d.DedupRatio = float64(d.Logical) / float64(d.Stored)
	}
}
