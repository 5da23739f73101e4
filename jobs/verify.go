package jobs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/blockferry/blockferry/backends"
	"github.com/blockferry/blockferry/sinks"
	"github.com/blockferry/blockferry/sinks/repository"
)

// VerifyReport says what a verify found.
type VerifyReport struct {
	Backup        string   `json:"backup"`
	ChunksChecked int      `json:"chunks_checked"`
	BytesChecked  int64    `json:"bytes_checked"`
	Missing       []string `json:"missing"`
	Corrupt       []string `json:"corrupt"`
	// Compared is true when the backup was also compared with a source; Differ
	// lists the offsets of the chunks whose content differs from it.
	Compared        bool    `json:"compared_with_source,omitempty"`
	Differ          []int64 `json:"differ,omitempty"`
	DurationSeconds float64 `json:"duration_seconds"`
}

// OK reports whether every chunk was found intact (and equal to the source).
func (r VerifyReport) OK() bool {
	return len(r.Missing) == 0 && len(r.Corrupt) == 0 && len(r.Differ) == 0
}

// ErrVerifyFailed: a verify found missing or corrupt chunks.
var ErrVerifyFailed = errors.New("backup is damaged")

// Verify re-reads and re-hashes every distinct chunk a backup names. Missing and
// corrupt chunks are collected and named in the report; any other error (the store
// unreachable) ends the verify, since it says nothing about the backup. With a
// source, every chunk position is also compared with it.
func Verify(ctx context.Context, repo *repository.Repository, m *repository.Manifest, src backends.Source, lim Limits, progress *Progress) (VerifyReport, error) {
	if progress == nil {
		progress = NewProgress()
	}
	start := time.Now()
	sizes := m.ChunkNeeds()
	var total int64
	for _, s := range sizes {
		total += s.Length
	}
	progress.bytesTotal.Store(total)
	rep := VerifyReport{Backup: m.ID, Missing: []string{}, Corrupt: []string{}}
	var mu sync.Mutex
	var checked atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(lim.concurrency())
	for c, size := range sizes {
		id, _ := repository.ParseChunkID(c) // every id was checked when the manifest was read
		n := size.Length
		g.Go(func() error {
			defer progress.bytesDone.Add(n)
			release, err := lim.Memory.reserve(gctx, verifyChunkMemory(n))
			if err != nil {
				return err
			}
			data, err := repo.GetChunk(gctx, id, nil)
			release() // data is dropped below
			if err == nil && !size.Fits(int64(len(data))) {
				err = fmt.Errorf("%w: %d bytes, want %d", repository.ErrCorrupt, len(data), n)
			}
			switch {
			case errors.Is(err, sinks.ErrNotFound):
				mu.Lock()
				rep.Missing = append(rep.Missing, c)
				mu.Unlock()
			case errors.Is(err, repository.ErrCorrupt):
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
	if src != nil && len(rep.Missing)+len(rep.Corrupt) == 0 {
		differ, err := compareWithSource(ctx, repo, m, src, lim)
		if err != nil {
			return rep, err
		}
		rep.Compared, rep.Differ = true, differ
	}
	sort.Strings(rep.Missing)
	sort.Strings(rep.Corrupt)
	rep.ChunksChecked = len(sizes)
	rep.BytesChecked = checked.Load()
	rep.DurationSeconds = time.Since(start).Seconds()
	if !rep.OK() {
		if len(rep.Differ) > 0 {
			return rep, fmt.Errorf("%w: backup %s differs from the source in %d chunks (first at offset %d)", ErrVerifyFailed, m.ID,
				len(rep.Differ), rep.Differ[0])
		}
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

// compareWithSource reads every chunk position of the source and compares it with
// the backup's content there, returning the offsets that differ.
func compareWithSource(ctx context.Context, repo *repository.Repository, m *repository.Manifest, src backends.Source, lim Limits) ([]int64, error) {
	if src.Size() != m.Size {
		return nil, fmt.Errorf("%w: the source has %d bytes, backup %s %d", ErrVerifyFailed, src.Size(), m.ID, m.Size)
	}
	var mu sync.Mutex
	var differ []int64
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(lim.concurrency())
	for i := range m.Chunks {
		g.Go(func() error {
			off, n := int64(i)*m.ChunkSize, m.ChunkLen(i)
			release, err := lim.Memory.reserve(gctx, n+restoreChunkMemory(m.ChunkSize))
			if err != nil {
				return err
			}
			defer release()
			have := make([]byte, n)
			if _, err := src.ReadAt(gctx, have, off); err != nil {
				return fmt.Errorf("read source at %d: %w", off, err)
			}
			same := isZero(have)
			if !m.ReadsAsZero(i) {
				want, _, err := repo.PositionReader(m, 0).Read(gctx, i, &repository.PositionBuffers{})
				if err != nil {
					return err
				}
				same = bytes.Equal(have, want)
			}
			if !same {
				mu.Lock()
				differ = append(differ, off)
				mu.Unlock()
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	slices.Sort(differ)
	return differ, nil
}
