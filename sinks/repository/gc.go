package repository

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"strings"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/blockferry/blockferry/sinks"
)

// Garbage collection's objects (docs/FORMAT.md, "Garbage collection").
const (
	gcSettingsName   = "gc/settings"
	condemnedPrefix  = "gc/condemned/" // gc/condemned/<list>: chunk ids a sweep may delete
	sweepingPrefix   = "gc/sweeping/"  // gc/sweeping/<list>/<run>: a sweep of <list> is under way
	pinsPrefix       = "gc/pins/"      // gc/pins/<attempt>: chunks a running backup reuses
	runsPrefix       = "gc/runs/"      // gc/runs/<run>: a prune run, for the store's clock
	idListAADPrefix  = "gc:"
	sweepDeleteBatch = 1000
)

// DefaultGrace is how long a condemned chunk waits before a sweep may delete it
// when the repository sets nothing else. Every backup attempt must commit within
// half of it (see GCView), so it must be well above the longest backup.
const DefaultGrace = 24 * time.Hour

// The grace periods a repository may set: at least a second, at most ten years
// (a longer one could only mean that nothing is ever collected).
const (
	minGrace = time.Second
	maxGrace = 10 * 365 * 24 * time.Hour
)

// ErrCollected: a chunk a backup attempt relies on was, or may have been,
// collected by a concurrent prune. The attempt fails and a retry starts over
// with what is stored then; it is transient.
var ErrCollected = errors.New("chunk collected by a concurrent prune")

var errCorruptIDList = fmt.Errorf("%w: chunk id list is not a multiple of 32 bytes", ErrCorrupt)

type gcSettings struct {
	// GraceMillis is the grace period in milliseconds.
	GraceMillis int64 `json:"grace_ms"`
}

// Grace returns the repository's grace period: DefaultGrace unless set.
func (r *Repository) Grace(ctx context.Context) (time.Duration, error) {
	data, err := getObject(ctx, r.store, gcSettingsName, nil, MaxSmallObject)
	if errors.Is(err, sinks.ErrNotFound) {
		return DefaultGrace, nil
	}
	if err != nil {
		return 0, fmt.Errorf("gc settings: %w", err)
	}
	var s gcSettings
	if err := json.Unmarshal(data, &s); err != nil || s.GraceMillis < minGrace.Milliseconds() || s.GraceMillis > maxGrace.Milliseconds() {
		// Out of range is corrupt, not clamped: a grace that overflowed into a
		// millisecond would let a prune delete the pins of running backups.
		return 0, fmt.Errorf("gc settings: %w: %q (the grace period is from %v to %v)", ErrCorrupt, data, minGrace, maxGrace)
	}
	return time.Duration(s.GraceMillis) * time.Millisecond, nil
}

// SetGrace records the grace period that backups and prunes of the repository
// use. Raising it is always safe; lowering it is safe only while no backup runs
// (an attempt bounds itself by the grace it read when it began).
func (r *Repository) SetGrace(ctx context.Context, d time.Duration) error {
	if d < minGrace || d > maxGrace {
		return fmt.Errorf("grace period %v: from %v to %v", d, minGrace, maxGrace)
	}
	data, err := json.Marshal(gcSettings{GraceMillis: d.Milliseconds()})
	if err != nil {
		return err
	}
	return r.store.Put(ctx, gcSettingsName, data)
}

func newULID() string { return ulid.MustNew(ulid.Timestamp(time.Now()), rand.Reader).String() }

// putIDs writes a condemned list or a pin: the ids, sealed like every object.
func (r *Repository) putIDs(ctx context.Context, name string, ids []ChunkID) error {
	obj := r.codec.Seal(nil, marshalIDs(ids), idListAADPrefix+name, false)
	if err := checkObjectSize(name, obj, MaxMetadataObject); err != nil {
		return err
	}
	return r.store.Put(ctx, name, obj)
}

// loadIDs reads a condemned list or a pin into a set.
func (r *Repository) loadIDs(ctx context.Context, name string) (*idSet, error) {
	obj, err := getObject(ctx, r.store, name, nil, MaxMetadataObject)
	if err != nil {
		return nil, err
	}
	data, err := r.codec.Open(obj, idListAADPrefix+name, nil)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	ids, err := unmarshalIDs(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	s := &idSet{ids: ids}
	s.compact()
	return s, nil
}

// condemnedList is one gc/condemned/<id> object as listed.
type condemnedList struct {
	id      string
	modTime time.Time
	ids     *idSet // loaded on demand
}

// listCondemned lists the condemned lists, oldest first (ids are ULIDs).
func (r *Repository) listCondemned(ctx context.Context) ([]condemnedList, error) {
	var out []condemnedList
	err := r.store.ListInfo(ctx, condemnedPrefix, func(o sinks.ObjectInfo) error {
		if id := strings.TrimPrefix(o.Name, condemnedPrefix); ValidID(id) {
			out = append(out, condemnedList{id: id, modTime: o.ModTime})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list condemned chunks: %w", err)
	}
	return out, nil
}

// sweepMarker is one gc/sweeping/<list>/<run> object.
type sweepMarker struct {
	list, run string
	modTime   time.Time
}

func (m sweepMarker) name() string { return sweepingPrefix + m.list + "/" + m.run }

func (r *Repository) listSweepMarkers(ctx context.Context) ([]sweepMarker, error) {
	var out []sweepMarker
	err := r.store.ListInfo(ctx, sweepingPrefix, func(o sinks.ObjectInfo) error {
		list, run, ok := strings.Cut(strings.TrimPrefix(o.Name, sweepingPrefix), "/")
		if ok && ValidID(list) && ValidID(run) {
			out = append(out, sweepMarker{list: list, run: run, modTime: o.ModTime})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list sweep markers: %w", err)
	}
	return out, nil
}

// storeNow writes the run's object and returns its modification time: the
// store's clock now, which is what every grace period is measured against.
func (r *Repository) storeNow(ctx context.Context, run string) (time.Time, error) {
	name := runsPrefix + run
	if err := r.store.Put(ctx, name, []byte(time.Now().UTC().Format(time.RFC3339Nano))); err != nil {
		return time.Time{}, fmt.Errorf("prune: %w", err)
	}
	var now time.Time
	err := r.store.ListInfo(ctx, name, func(o sinks.ObjectInfo) error {
		if o.Name == name {
			now = o.ModTime
		}
		return nil
	})
	if err == nil && now.IsZero() {
		err = fmt.Errorf("%s not listed after it was written", name)
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("prune: the store's clock: %w", err)
	}
	return now, nil
}

// chunkIDFromName parses chunks/<hh>/<id>; ok is false for anything else.
func chunkIDFromName(name string) (ChunkID, bool) {
	h := path.Base(name)
	id, err := ParseChunkID(h)
	if err != nil || name != chunkName(id) {
		return ChunkID{}, false
	}
	return id, true
}
