package repository

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/blockferry/blockferry/sinks"
)

// The backup index (docs/FORMAT.md, "Backup index"): index/<disk key>/<backup id>
// holds a backup's manifest without its chunk index, so that the backups of one
// disk are listed by reading a few hundred bytes each, only of that disk, instead
// of every manifest in the repository. It is advisory: backups/ is the truth. An
// entry whose manifest is gone is ignored (and collected by prune); a manifest
// without an entry (written by an older blockferry) is read as before.
const (
	indexPrefix    = "index/"
	indexAADPrefix = "index:"
)

// diskKey names a disk in the index without revealing it: the first 16 bytes of
// the repository's chunk hash (keyed when encrypted) of "disk:" + name, in hex.
func (r *Repository) diskKey(disk string) string {
	id := r.codec.ID([]byte("disk:" + disk))
	return hex.EncodeToString(id[:16])
}

func (r *Repository) indexName(disk, id string) string {
	return indexPrefix + r.diskKey(disk) + "/" + id
}

// putIndexEntry writes m's index entry; PutManifest calls it before it writes
// the manifest, so that every manifest it writes has one.
func (r *Repository) putIndexEntry(ctx context.Context, m *Manifest) error {
	e := *m
	e.Chunks, e.Patches = nil, nil
	data, err := json.Marshal(&e)
	if err != nil {
		return err
	}
	name := r.indexName(m.Disk, m.ID)
	if err := r.store.Put(ctx, name, r.codec.Seal(nil, data, indexAADPrefix+name, false)); err != nil {
		return fmt.Errorf("write index entry of backup %s: %w", m.ID, err)
	}
	return nil
}

// readIndexEntry reads the entry name of backup id: its manifest without the
// chunk index. An entry that does not decode, or names another backup or a
// disk of another key, is an error (the caller reads the manifest instead).
func (r *Repository) readIndexEntry(ctx context.Context, name, id string) (*Manifest, error) {
	obj, err := getObject(ctx, r.store, name, nil, MaxIndexObject)
	if err != nil {
		return nil, err
	}
	data, err := r.codec.Open(obj, indexAADPrefix+name, nil)
	if err != nil {
		return nil, err
	}
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrCorrupt, name, err)
	}
	if m.ID != id || name != r.indexName(m.Disk, id) || m.Version != ManifestVersion {
		return nil, fmt.Errorf("%w: %s does not describe backup %s", ErrCorrupt, name, id)
	}
	return &m, nil
}

// indexEntry is one listed index object.
type indexEntry struct {
	name    string
	modTime time.Time
}

// listIndex lists the index entries by backup id.
func (r *Repository) listIndex(ctx context.Context) (map[string]indexEntry, error) {
	out := map[string]indexEntry{}
	err := r.store.ListInfo(ctx, indexPrefix, func(o sinks.ObjectInfo) error {
		rest := strings.TrimPrefix(o.Name, indexPrefix)
		if key, id, ok := strings.Cut(rest, "/"); ok && len(key) == 32 && ValidID(id) {
			out[id] = indexEntry{name: o.Name, modTime: o.ModTime}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list backup index: %w", err)
	}
	return out, nil
}

// listBackupIDs lists the names under backups/: the backup ids, and as bad
// objects the names that are not backup ids.
func (r *Repository) listBackupIDs(ctx context.Context) (map[string]bool, []BadObject, error) {
	ids := map[string]bool{}
	var bad []BadObject
	err := r.store.List(ctx, backupsPrefix, func(name string) error {
		if id := strings.TrimPrefix(name, backupsPrefix); ValidID(id) {
			ids[id] = true
		} else {
			bad = append(bad, BadObject{Name: name, Error: "not a backup id"})
		}
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("list backups: %w", err)
	}
	return ids, bad, nil
}

// dropIndexEntries deletes the index entries of the backups ids, after their
// manifests were deleted.
func (r *Repository) dropIndexEntries(ctx context.Context, ids []string) error {
	entries, err := r.listIndex(ctx)
	if err != nil {
		return err
	}
	var names []string
	for _, id := range ids {
		if e, ok := entries[id]; ok {
			names = append(names, e.name)
		}
	}
	return r.store.DeleteObjects(ctx, names)
}

// staleIndexEntries are the entries older than cutoff whose manifest is gone:
// forgotten by a blockferry that did not know the index, or whose Forget or
// attempt died between its two writes. A younger one may belong to an attempt
// about to write its manifest; a lost one only costs a manifest read.
func (r *Repository) staleIndexEntries(ctx context.Context, cutoff time.Time) ([]string, error) {
	entries, err := r.listIndex(ctx)
	if err != nil || len(entries) == 0 {
		return nil, err
	}
	ids, _, err := r.listBackupIDs(ctx)
	if err != nil {
		return nil, err
	}
	var stale []string
	for id, e := range entries {
		if !ids[id] && e.modTime.Before(cutoff) {
			stale = append(stale, e.name)
		}
	}
	return stale, nil
}

// listedBackup reads backup id for a listing: from its index entry when there
// is one, else (or when the entry is unusable) from its manifest, without the
// chunk index. A manifest that cannot be read is returned as a bad object.
func (r *Repository) listedBackup(ctx context.Context, id, entry string) (*Manifest, *BadObject, error) {
	if entry != "" {
		m, err := r.readIndexEntry(ctx, entry, id)
		if err == nil {
			return m, nil, nil
		}
		if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrWrongKey) && !errors.Is(err, sinks.ErrNotFound) {
			return nil, nil, err
		}
	}
	m, err := r.Manifest(ctx, id)
	switch {
	case err == nil:
		m.Chunks, m.Patches = nil, nil
		return m, nil, nil
	case errors.Is(err, ErrBackupNotFound): // forgotten while we listed
		return nil, nil, nil
	case errors.Is(err, ErrCorrupt) || errors.Is(err, ErrWrongKey):
		return nil, &BadObject{Name: manifestName(id), Error: err.Error()}, nil
	}
	return nil, nil, err
}
