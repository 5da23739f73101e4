package repository

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/blockferry/blockferry/internal/safe"

	"golang.org/x/sync/errgroup"

	"github.com/blockferry/blockferry/sinks"
)

// maxSweepWait bounds how long an attempt waits for a sweep to end before it
// gives up (ErrCollected, transient): a sweeper that died leaves its marker until
// the next prune.
const maxSweepWait = 15 * time.Minute

// GCView is the backup side of garbage collection for one attempt (docs/FORMAT.md,
// "Garbage collection"). BeginAttempt loads it and returns a copy of the
// repository that writes through it:
//
//   - PutChunk uploads a condemned chunk again instead of deduplicating it, and
//     trusts the in-process cache of stored chunks only for what it learnt after
//     the attempt began;
//   - LoadCheckpoint drops the positions whose chunks are condemned or missing,
//     so that they are read again;
//   - PutManifest first checks that no sweep took a chunk the attempt re-uploaded
//     and that the attempt is within its time bound (half the grace period).
//
// The parent's condemned chunks, which an incremental reuses without uploading
// them, are pinned before the attempt looks for sweeps. End removes the pin.
type GCView struct {
	repo    *Repository
	started time.Time
	grace   time.Duration
	lists   []condemnedList
	pin     string

	mu       sync.Mutex
	uploaded map[ChunkID]struct{} // condemned chunks this attempt uploaded again
}

// BeginAttempt starts a backup attempt; parent is the manifest an incremental
// reuses chunks of (nil for a full backup). Use the returned repository for the
// attempt's writes and call End when it is over, whatever the outcome.
func (r *Repository) BeginAttempt(ctx context.Context, parent *Manifest) (*Repository, *GCView, error) {
	v := &GCView{started: time.Now(), uploaded: map[ChunkID]struct{}{}}
	var err error
	if v.grace, err = r.Grace(ctx); err != nil {
		return nil, nil, err
	}
	if v.lists, err = r.loadCondemned(ctx); err != nil {
		return nil, nil, err
	}
	attempt := *r
	attempt.gc, v.repo = v, &attempt
	if err := v.pinParent(ctx, parent); err != nil {
		v.End(ctx)
		return nil, nil, err
	}
	return &attempt, v, nil
}

// loadCondemned loads every condemned list. A list swept between the listing
// and the read is dropped once no sweep of it is under way: a sweeper still
// running could otherwise delete a chunk this attempt finds stored.
func (r *Repository) loadCondemned(ctx context.Context) ([]condemnedList, error) {
	lists, err := r.listCondemned(ctx)
	if err != nil {
		return nil, err
	}
	var kept []condemnedList
	var gone []string
	for _, l := range lists {
		l.ids, err = r.loadIDs(ctx, condemnedPrefix+l.id)
		if errors.Is(err, sinks.ErrNotFound) {
			gone = append(gone, l.id)
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("garbage collection state: %w", err)
		}
		kept = append(kept, l)
	}
	if len(gone) > 0 {
		if err := r.waitSweeps(ctx, gone); err != nil {
			return nil, err
		}
	}
	return kept, nil
}

// condemnedChunk reports whether a sweep may delete id; false for a nil view.
func (v *GCView) condemnedChunk(id ChunkID) bool {
	if v == nil {
		return false
	}
	for _, l := range v.lists {
		if l.ids.has(id) {
			return true
		}
	}
	return false
}

func (v *GCView) reuploaded(id ChunkID) {
	v.mu.Lock()
	v.uploaded[id] = struct{}{}
	v.mu.Unlock()
}

// pinParent writes a pin naming the parent's condemned chunks, then verifies
// them against sweeps that began before the pin was visible.
func (v *GCView) pinParent(ctx context.Context, parent *Manifest) error {
	if parent == nil {
		return nil
	}
	var pinned []ChunkID
	for h := range parent.ChunkNeeds() {
		if id, err := ParseChunkID(h); err == nil && v.condemnedChunk(id) {
			pinned = append(pinned, id)
		}
	}
	if len(pinned) == 0 {
		return nil
	}
	name := pinsPrefix + newULID()
	if err := v.repo.putIDs(ctx, name, pinned); err != nil {
		return fmt.Errorf("pin the parent's chunks: %w", err)
	}
	v.pin = name
	if err := v.verify(ctx, pinned); err != nil {
		return fmt.Errorf("parent %s: %w", parent.ID, err)
	}
	return nil
}

// End removes the attempt's pin, if it wrote one.
func (v *GCView) End(ctx context.Context) {
	if v != nil && v.pin != "" {
		_ = v.repo.store.Delete(context.WithoutCancel(ctx), v.pin) // a leftover pin is collected after the grace period
	}
}

// beforeCommit runs just before the manifest is written.
func (v *GCView) beforeCommit(ctx context.Context) error {
	if v == nil {
		return nil
	}
	if took := time.Since(v.started); took >= v.grace/2 {
		return fmt.Errorf("%w: the attempt ran %v, longer than half the grace period (%v)", ErrCollected, took.Round(time.Second), v.grace)
	}
	v.mu.Lock()
	ids := slices.Collect(maps.Keys(v.uploaded))
	v.mu.Unlock()
	return v.verify(ctx, ids)
}

// verify makes sure that no sweep deletes ids, which were uploaded (or pinned)
// before the call, and that none has. Sweep markers are listed before the
// condemned lists: a sweep of a list that is still there and had no marker then
// writes its marker later and so sees the chunks' new modification times or the
// pin. A list with a marker is waited for; a list with a marker then, or gone
// now, was swept: its chunks among ids are looked up.
func (v *GCView) verify(ctx context.Context, ids []ChunkID) error {
	if len(ids) == 0 {
		return nil
	}
	markers, err := v.repo.listSweepMarkers(ctx)
	if err != nil {
		return err
	}
	current, err := v.repo.listCondemned(ctx)
	if err != nil {
		return err
	}
	present := map[string]bool{}
	for _, l := range current {
		present[l.id] = true
	}
	sweeping := map[string]bool{}
	for _, m := range markers {
		sweeping[m.list] = true
	}
	var wait []string
	var check []ChunkID
	for _, l := range v.lists {
		if present[l.id] && !sweeping[l.id] {
			continue
		}
		if sweeping[l.id] {
			wait = append(wait, l.id)
		}
		for _, id := range ids {
			if l.ids.has(id) {
				check = append(check, id)
			}
		}
	}
	if err := v.repo.waitSweeps(ctx, wait); err != nil {
		return err
	}
	missing, err := v.repo.missingChunks(ctx, check)
	if err != nil {
		return err
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: %d chunks, among them %s", ErrCollected, len(missing), missing[0])
	}
	return nil
}

// waitSweeps waits until no sweep of the lists is under way.
func (r *Repository) waitSweeps(ctx context.Context, lists []string) error {
	if len(lists) == 0 {
		return nil
	}
	deadline := time.Now().Add(maxSweepWait)
	for {
		markers, err := r.listSweepMarkers(ctx)
		if err != nil {
			return err
		}
		busy := ""
		for _, m := range markers {
			if slices.Contains(lists, m.list) {
				busy = m.list
			}
		}
		if busy == "" {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: a sweep of condemned list %s has not ended in %v", ErrCollected, busy, maxSweepWait)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// missingChunks looks up ids, 16 at a time, and returns those not stored.
func (r *Repository) missingChunks(ctx context.Context, ids []ChunkID) ([]ChunkID, error) {
	var mu sync.Mutex
	var missing []ChunkID
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	for _, id := range ids {
		safe.Go(g, func() error {
			ok, err := r.store.Exists(gctx, chunkName(id))
			if err == nil && !ok {
				mu.Lock()
				missing = append(missing, id)
				mu.Unlock()
			}
			return err
		})
	}
	err := g.Wait()
	return missing, err
}

// reusableCheckpoint drops from cp the positions whose chunks an attempt must
// not take over: condemned ones (a sweep may delete them) and missing ones (a
// sweep deleted them after the earlier attempt re-uploaded them, before it
// noticed). A chunk found stored now can only be deleted by a sweep of a list
// that names it, and lists that existed when the attempt began are excluded.
func (v *GCView) reusableCheckpoint(ctx context.Context, cp *Checkpoint) error {
	if v == nil {
		return nil
	}
	var named idSet
	for i, h := range cp.Done {
		named.addManifest([]string{h}, map[int][]Patch{i: cp.Patches[i]})
	}
	named.compact()
	missing, err := v.repo.missingChunks(ctx, named.ids)
	if err != nil {
		return err
	}
	drop := idSet{ids: missing}
	for _, id := range named.ids {
		if v.condemnedChunk(id) {
			drop.ids = append(drop.ids, id)
		}
	}
	drop.compact()
	for i, h := range cp.Done {
		var pos idSet
		pos.addManifest([]string{h}, map[int][]Patch{i: cp.Patches[i]})
		pos.compact()
		if slices.ContainsFunc(pos.ids, drop.has) {
			delete(cp.Done, i)
			delete(cp.Patches, i)
		}
	}
	return nil
}
