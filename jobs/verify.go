package jobs

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/blockferry/blockferry/sinks"
)

// VerifyReport says what a verify found.
type VerifyReport struct {
	Backup          string   `json:"backup"`
	ChunksChecked   int      `json:"chunks_checked"`
	BytesChecked    int64    `json:"bytes_checked"`
	Missing         []string `json:"missing"`
	Corrupt         []string `json:"corrupt"`
	DurationSeconds float64  `json:"duration_seconds"`
}

// OK reports whether every chunk was found intact.
func (r VerifyReport) OK() bool { return len(r.Missing) == 0 && len(r.Corrupt) == 0 }

// ErrVerifyFailed: a verify found missing or corrupt chunks.
var ErrVerifyFailed = errors.New("backup is damaged")

// Verify re-reads and re-hashes every distinct chunk a backup names. Missing and
// corrupt chunks are collected and named in the report; any other error (the store
// unreachable) ends the verify, since it says nothing about the backup.
func Verify(ctx context.Context, repo *sinks.Repository, m *sinks.Manifest, concurrency int, progress *Progress) (VerifyReport, error) {
	if progress == nil {
		progress = NewProgress()
	}
	start := time.Now()
	sizes := map[string]int64{}
	for i, c := range m.Chunks {
		if c != "" {
			sizes[c] = m.ChunkLen(i)
		}
	}
	var total int64
	for _, n := range sizes {
		total += n
	}
	progress.bytesTotal.Store(total)
	rep := VerifyReport{Backup: m.ID, Missing: []string{}, Corrupt: []string{}}
	var mu sync.Mutex
	var checked atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(max(concurrency, 1))
	for c, n := range sizes {
		id, err := sinks.ParseChunkID(c)
		if err != nil {
			return rep, err
		}
		g.Go(func() error {
			defer progress.bytesDone.Add(n)
			data, err := repo.GetChunk(gctx, id)
			if err == nil && int64(len(data)) != n {
				err = fmt.Errorf("%w: %d bytes, want %d", sinks.ErrCorrupt, len(data), n)
			}
			switch {
			case errors.Is(err, sinks.ErrNotFound):
				mu.Lock()
				rep.Missing = append(rep.Missing, c)
				mu.Unlock()
			case errors.Is(err, sinks.ErrCorrupt):
				mu.Lock()
				rep.Corrupt = append(rep.Corrupt, c)
				mu.Unlock()
			case err != nil:
				return err
			default:
				checked.Add(n)
				progress.bytesRead.Add(n)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return rep, err
	}
	sort.Strings(rep.Missing)
	sort.Strings(rep.Corrupt)
	rep.ChunksChecked = len(sizes)
	rep.BytesChecked = checked.Load()
	rep.DurationSeconds = time.Since(start).Seconds()
	if !rep.OK() {
		return rep, fmt.Errorf("%w: backup %s: %d missing and %d corrupt chunks (first: %s)", ErrVerifyFailed, m.ID,
			len(rep.Missing), len(rep.Corrupt), firstOf(rep.Corrupt, rep.Missing))
	}
	return rep, nil
}

func firstOf(lists ...[]string) string {
	for _, l := range lists {
		if len(l) > 0 {
			return l[0]
		}
	}
	return ""
}
