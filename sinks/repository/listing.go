package repository

import (
	"context"
	"errors"
	"fmt"
	"path"
	"sort"
	"strings"
	"sync"

	"github.com/blockferry/blockferry/internal/safe"

	"golang.org/x/sync/errgroup"

	"github.com/blockferry/blockferry/sinks"
)

// BadObject is an object where a reader expected something it could not use: a
// manifest that does not decode, a foreign object under backups/.
type BadObject struct {
	Name  string `json:"name"`
	Error string `json:"error"`
}

// ListBackups lists the backups of a disk (all disks when disk is empty), oldest
// first, without their chunk index. An object under backups/ that is not a
// readable manifest is named in bad and skipped; only a failure to list at all
// is an error. It lists the names under backups/ and index/ and reads the index
// entries of the disk's backups (a few hundred bytes each); only backups without
// an entry (written by an older blockferry) have their manifests read.
func (r *Repository) ListBackups(ctx context.Context, disk string) (list []*Manifest, bad []BadObject, err error) {
	ids, bad, err := r.listBackupIDs(ctx)
	if err != nil {
		return nil, nil, err
	}
	entries, err := r.listIndex(ctx)
	if err != nil {
		return nil, nil, err
	}
	dir := ""
	if disk != "" {
		dir = indexPrefix + r.diskKey(disk) + "/"
	}
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	for id := range ids {
		e, indexed := entries[id]
		if indexed && !strings.HasPrefix(e.name, dir) {
			continue // another disk's
		}
		g.Go(func() error {
			m, b, err := r.listedBackup(gctx, id, e.name)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case b != nil:
				bad = append(bad, *b)
			case m != nil && (disk == "" || m.Disk == disk):
				list = append(list, m)
			}
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, nil, fmt.Errorf("list backups: %w", err)
	}
	sort.Slice(list, func(i, j int) bool {
		if !list[i].Started.Equal(list[j].Started) {
			return list[i].Started.Before(list[j].Started)
		}
		return list[i].ID < list[j].ID
	})
	sort.Slice(bad, func(i, j int) bool { return bad[i].Name < bad[j].Name })
	return list, bad, nil
}

// eachManifest reads every manifest, 16 at a time, and calls fn with each (one
// call at a time, in no order) and bad with each object under backups/ that is
// not a readable manifest.
func (r *Repository) eachManifest(ctx context.Context, fn func(*Manifest), bad func(BadObject)) error {
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	err := r.store.List(ctx, backupsPrefix, func(name string) error {
		id := strings.TrimPrefix(name, backupsPrefix)
		if !ValidID(id) || path.Base(name) != id {
			mu.Lock()
			bad(BadObject{Name: name, Error: "not a backup id"})
			mu.Unlock()
			return nil
		}
		safe.Go(g, func() error {
			m, err := r.Manifest(gctx, id)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				fn(m)
			case errors.Is(err, ErrBackupNotFound): // deleted while we listed
			case errors.Is(err, ErrCorrupt) || errors.Is(err, ErrWrongKey):
				bad(BadObject{Name: name, Error: err.Error()})
			default:
				return err
			}
			return nil
		})
		return gctx.Err()
	})
	if werr := g.Wait(); werr != nil {
		err = werr
	}
	if err != nil {
		return fmt.Errorf("list backups: %w", err)
	}
	return nil
}

// Forget deletes the manifests of the backups (in batches), then their index
// entries. Their chunks stay until a prune collects those that no other backup
// names.
func (r *Repository) Forget(ctx context.Context, ids []string) error {
	names := make([]string, 0, len(ids))
	for _, id := range ids {
		if !ValidID(id) {
			return fmt.Errorf("backup id %q is not valid", id)
		}
		names = append(names, manifestName(id))
	}
	if err := r.store.DeleteObjects(ctx, names); err != nil {
		return fmt.Errorf("forget: %w", err)
	}
	if err := r.dropIndexEntries(ctx, ids); err != nil {
		return fmt.Errorf("forget: the backups are forgotten, their index entries are left for prune: %w", err)
	}
	return nil
}

// chunkSizes lists every stored chunk with its stored size.
func (r *Repository) chunkSizes(ctx context.Context, fn func(id ChunkID, size int64)) (stray int, err error) {
	err = r.store.ListInfo(ctx, chunksPrefix, func(o sinks.ObjectInfo) error {
		if id, ok := chunkIDFromName(o.Name); ok {
			fn(id, o.Size)
		} else {
			stray++
		}
		return nil
	})
	return stray, err
}
