package repository

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/blockferry/blockferry/internal/safe"

	"golang.org/x/sync/errgroup"

	"github.com/blockferry/blockferry/sinks"
)

// PruneOptions tune a prune run.
type PruneOptions struct {
	// DryRun changes nothing: the report says what a run would delete and condemn
	// (sweeps are judged by the local clock instead of the store's).
	DryRun bool
	// OnChunk, when set, is called with the stored size of each chunk the sweep
	// examines, as it lists them: a prune's progress.
	OnChunk func(size int64)
}

// PruneReport says what a prune run did (or, dry, would do).
type PruneReport struct {
	ChunksTotal      int   `json:"chunks_total"`
	BytesTotal       int64 `json:"bytes_total"`
	ChunksReferenced int   `json:"chunks_referenced"`
	// Backups is the number of manifests the mark phase read.
	Backups            int   `json:"backups"`
	ListsSwept         int   `json:"lists_swept"`
	ChunksDeleted      int   `json:"chunks_deleted"`
	BytesFreed         int64 `json:"bytes_freed"`
	ChunksCondemned    int   `json:"chunks_condemned"`
	BytesCondemned     int64 `json:"bytes_condemned"`
	ListsPending       int   `json:"lists_pending"`
	CheckpointsDeleted int   `json:"checkpoints_deleted"`
	PinsDeleted        int   `json:"pins_deleted"`
	// IndexEntriesDeleted counts index entries whose backup is gone.
	IndexEntriesDeleted int `json:"index_entries_deleted"`
	StrayObjects        int `json:"stray_objects"`
}

// Prune runs one round of garbage collection (docs/FORMAT.md, "Garbage
// collection"): it sweeps the condemned lists whose grace period is over,
// deleting their chunks that nothing names and nobody re-uploaded since, collects
// checkpoints and pins older than the grace period, and condemns the chunks that
// nothing names now, for a later run to sweep. It takes no lock; any number of
// backups and prunes may run beside it.
func (r *Repository) Prune(ctx context.Context, o PruneOptions) (*PruneReport, error) {
	grace, err := r.Grace(ctx)
	if err != nil {
		return nil, err
	}
	p := &pruneRun{repo: r, run: newULID(), grace: grace, dry: o.DryRun, onChunk: o.OnChunk, report: &PruneReport{}}
	if p.dry {
		p.now = time.Now()
	} else if p.now, err = r.storeNow(ctx, p.run); err != nil {
		return nil, err
	}
	defer p.deleteRun(ctx)
	if err := p.startSweeps(ctx); err != nil {
		return nil, err
	}
	refs, backups, err := r.referenced(ctx)
	if err != nil {
		return nil, err
	}
	p.report.ChunksReferenced, p.report.Backups = refs.len(), backups
	condemn, err := p.sweepChunks(ctx, refs)
	if err != nil {
		return nil, err
	}
	if err := p.finishSweeps(ctx); err != nil {
		return nil, err
	}
	if err := p.collectStale(ctx); err != nil {
		return nil, err
	}
	if !p.dry {
		// In lists of at most maxListIDs: one object for all could pass what a
		// reader accepts (MaxMetadataObject) in a large repository, and no prune
		// would ever condemn anything again.
		for len(condemn) > 0 {
			n := min(len(condemn), maxListIDs)
			if err := r.putIDs(ctx, condemnedPrefix+newULID(), condemn[:n]); err != nil {
				return nil, fmt.Errorf("prune: write condemned list: %w", err)
			}
			condemn = condemn[n:]
		}
	}
	return p.report, nil
}

// maxListIDs is the most chunk ids one condemned list holds: 256 MiB of them.
// A variable for tests.
var maxListIDs = 8 << 20

// pruneRun is the state of one Prune.
type pruneRun struct {
	repo  *Repository
	run   string
	grace time.Duration
	now   time.Time // the store's clock when the run began
	dry   bool
	// due are the lists being swept, pending those whose grace is not over.
	due, pending []condemnedList
	onChunk      func(size int64)
	report       *PruneReport
}

// startSweeps writes a marker for each list whose grace period is over, before
// reading anything the sweep decides on, then reads the lists.
func (p *pruneRun) startSweeps(ctx context.Context) error {
	lists, err := p.repo.listCondemned(ctx)
	if err != nil {
		return err
	}
	for _, l := range lists {
		if l.modTime.Add(p.grace).After(p.now) {
			p.pending = append(p.pending, l)
			continue
		}
		if !p.dry {
			if err := p.repo.store.Put(ctx, p.marker(l.id), nil); err != nil {
				return fmt.Errorf("prune: mark sweep: %w", err)
			}
		}
		p.due = append(p.due, l)
	}
	due := p.due[:0]
	for _, l := range p.due {
		l.ids, err = p.repo.loadIDs(ctx, condemnedPrefix+l.id)
		if errors.Is(err, sinks.ErrNotFound) { // another prune swept it: so must nobody else now
			_ = p.dropMarker(ctx, l.id)
			continue
		}
		if err != nil {
			return fmt.Errorf("prune: %w", err)
		}
		due = append(due, l)
	}
	p.due = due
	for i := range p.pending {
		if p.pending[i].ids, err = p.repo.loadIDs(ctx, condemnedPrefix+p.pending[i].id); err != nil && !errors.Is(err, sinks.ErrNotFound) {
			return fmt.Errorf("prune: %w", err)
		}
		if p.pending[i].ids == nil {
			p.pending[i].ids = &idSet{}
		}
	}
	p.report.ListsPending = len(p.pending)
	return nil
}

func (p *pruneRun) marker(list string) string {
	return sweepMarker{list: list, run: p.run}.name()
}

func (p *pruneRun) dropMarker(ctx context.Context, list string) error {
	if p.dry {
		return nil
	}
	return p.repo.store.Delete(context.WithoutCancel(ctx), p.marker(list))
}

// sweepChunks lists every chunk once: it deletes those a due list condemns that
// nothing references and that were not written since the list, and returns the
// unreferenced ones no list names yet, to be condemned.
func (p *pruneRun) sweepChunks(ctx context.Context, refs *idSet) ([]ChunkID, error) {
	// A sweep must not outlive half the grace period, so that a marker older than
	// the grace period belongs to a sweeper that is gone.
	sctx, cancel := context.WithTimeout(ctx, p.grace/2)
	defer cancel()
	var batch []string
	flush := func() error {
		if len(batch) == 0 || p.dry {
			batch = batch[:0]
			return nil
		}
		err := p.repo.store.DeleteObjects(sctx, batch)
		batch = batch[:0]
		return err
	}
	var condemn []ChunkID
	err := p.repo.store.ListInfo(ctx, chunksPrefix, func(o sinks.ObjectInfo) error {
		id, ok := chunkIDFromName(o.Name)
		if !ok {
			p.report.StrayObjects++
			return nil
		}
		p.report.ChunksTotal++
		p.report.BytesTotal += o.Size
		if p.onChunk != nil {
			p.onChunk(o.Size)
		}
		switch {
		case refs.has(id):
			return nil
		case p.sweeps(id, o.ModTime):
			p.report.ChunksDeleted++
			p.report.BytesFreed += o.Size
			if batch = append(batch, o.Name); len(batch) == sweepDeleteBatch {
				return flush()
			}
		case !p.condemnedPending(id):
			condemn = append(condemn, id)
			p.report.ChunksCondemned++
			p.report.BytesCondemned += o.Size
		}
		return nil
	})
	if err == nil {
		err = flush()
	}
	if err != nil {
		return nil, fmt.Errorf("prune: sweep: %w", err)
	}
	return condemn, nil
}

// sweeps reports whether a due list condemns the chunk and the chunk was last
// written before the list: written after, it was uploaded again by a backup that
// saw the list and needs it.
func (p *pruneRun) sweeps(id ChunkID, modTime time.Time) bool {
	for _, l := range p.due {
		if modTime.Before(l.modTime) && l.ids.has(id) {
			return true
		}
	}
	return false
}

func (p *pruneRun) condemnedPending(id ChunkID) bool {
	for _, l := range p.pending {
		if l.ids.has(id) {
			return true
		}
	}
	return false
}

// finishSweeps deletes the swept lists, then the markers: this run's, and those
// of sweepers that died (older than the grace period).
func (p *pruneRun) finishSweeps(ctx context.Context) error {
	p.report.ListsSwept = len(p.due)
	if p.dry || len(p.due) == 0 {
		return nil
	}
	var names []string
	for _, l := range p.due {
		names = append(names, condemnedPrefix+l.id)
	}
	if err := p.repo.store.DeleteObjects(ctx, names); err != nil {
		return fmt.Errorf("prune: delete swept lists: %w", err)
	}
	names = names[:0]
	for _, l := range p.due {
		names = append(names, p.marker(l.id))
	}
	return p.repo.store.DeleteObjects(ctx, names)
}

// collectStale deletes checkpoints, pins, markers and run objects that are older
// than the grace period: what their writers left behind when they failed or
// finished, since no attempt or sweep lives that long.
func (p *pruneRun) collectStale(ctx context.Context) error {
	var names []string
	for _, prefix := range []string{checkpointsPrefix, pinsPrefix, sweepingPrefix, runsPrefix} {
		err := p.repo.store.ListInfo(ctx, prefix, func(o sinks.ObjectInfo) error {
			if o.ModTime.Add(p.grace).After(p.now) {
				return nil
			}
			names = append(names, o.Name)
			switch prefix {
			case checkpointsPrefix:
				p.report.CheckpointsDeleted++
			case pinsPrefix:
				p.report.PinsDeleted++
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("prune: %w", err)
		}
	}
	stale, err := p.repo.staleIndexEntries(ctx, p.now.Add(-p.grace))
	if err != nil {
		return fmt.Errorf("prune: %w", err)
	}
	p.report.IndexEntriesDeleted = len(stale)
	if p.dry {
		return nil
	}
	if err := p.repo.store.DeleteObjects(ctx, append(names, stale...)); err != nil {
		return fmt.Errorf("prune: collect leftovers: %w", err)
	}
	return nil
}

func (p *pruneRun) deleteRun(ctx context.Context) {
	if !p.dry {
		_ = p.repo.store.Delete(context.WithoutCancel(ctx), runsPrefix+p.run)
	}
}

// referenced is the mark set: every chunk named by a manifest (base chunks and
// patches), a checkpoint or a pin. A manifest or pin that cannot be read stops
// the prune, since its chunks cannot be known; an unreadable checkpoint is
// skipped, as a backup ignores it too.
func (r *Repository) referenced(ctx context.Context) (refs *idSet, backups int, err error) {
	refs = &idSet{}
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	add := func(chunks []string, patches map[int][]Patch) {
		mu.Lock()
		refs.addManifest(chunks, patches)
		mu.Unlock()
	}
	visit := func(name string) error {
		switch {
		case strings.HasPrefix(name, backupsPrefix):
			id := strings.TrimPrefix(name, backupsPrefix)
			if !ValidID(id) {
				return nil
			}
			safe.Go(g, func() error {
				m, err := r.Manifest(gctx, id)
				if err != nil {
					return fmt.Errorf("prune: %w (forget it or fix it first)", err)
				}
				add(m.Chunks, m.Patches)
				mu.Lock()
				backups++
				mu.Unlock()
				return nil
			})
		case strings.HasPrefix(name, checkpointsPrefix):
			id := strings.TrimPrefix(name, checkpointsPrefix)
			safe.Go(g, func() error {
				if cp, err := r.LoadCheckpoint(gctx, id); err == nil && cp != nil {
					add(nil, cp.Patches)
					add(mapValues(cp.Done), nil)
				}
				return nil
			})
		case strings.HasPrefix(name, pinsPrefix):
			safe.Go(g, func() error {
				pin, err := r.loadIDs(gctx, name)
				if errors.Is(err, sinks.ErrNotFound) {
					return nil
				}
				if err != nil {
					return fmt.Errorf("prune: %w", err)
				}
				mu.Lock()
				for _, id := range pin.ids {
					refs.add(id)
				}
				mu.Unlock()
				return nil
			})
		}
		return gctx.Err()
	}
	for _, prefix := range []string{backupsPrefix, checkpointsPrefix, pinsPrefix} {
		if err = r.store.List(gctx, prefix, visit); err != nil {
			break
		}
	}
	if werr := g.Wait(); werr != nil {
		err = werr // the first failure of a read, which also stopped the listing
	}
	if err != nil {
		return nil, 0, err
	}
	refs.compact()
	return refs, backups, nil
}

func mapValues(m map[int]string) []string {
	out := make([]string, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	return out
}
