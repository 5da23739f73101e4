package jobs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/blockferry/blockferry/internal/safe"

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
	r := &verifyRun{repo: repo, m: m, limits: lim, progress: progress}
	r.rep = VerifyReport{Backup: m.ID, Missing: []string{}, Corrupt: []string{}}
	needs := m.ChunkNeeds()
	if err := r.checkChunks(ctx, needs); err != nil {
		return r.rep, err
	}
	rep := r.rep
	if src != nil && len(rep.Missing)+len(rep.Corrupt) == 0 {
		differ, err := r.compare(ctx, src)
		if err != nil {
			return rep, err
		}
		rep.Compared, rep.Differ = true, differ
	}
	sort.Strings(rep.Missing)
	sort.Strings(rep.Corrupt)
	rep.ChunksChecked = len(needs)
	rep.BytesChecked = progress.bytesRead.Load()
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

// verifyRun is one verify in progress. Its progress counts the bytes of the chunks
// found intact (bytesRead), for its monitor and its report.
type verifyRun struct {
	repo     *repository.Repository
	m        *repository.Manifest
	limits   Limits
	progress *Progress

	mu  sync.Mutex
	rep VerifyReport // the missing and corrupt chunks, as they are found
}

// checkChunks checks every chunk of needs, some at once.
func (r *verifyRun) checkChunks(ctx context.Context, needs map[string]repository.ChunkNeed) error {
	var total int64
	for _, need := range needs {
		total += need.Length
	}
	r.progress.bytesTotal.Store(total)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(r.limits.concurrency())
	for c, need := range needs {
		safe.Go(g, func() error { return r.checkChunk(gctx, c, need) })
	}
	return g.Wait()
}

// checkChunk reads chunk c, which the repository checks against its id, and
// checks its length against what the backup needs of it. A chunk missing or
// corrupt goes into the report; any other failure is returned.
func (r *verifyRun) checkChunk(ctx context.Context, c string, need repository.ChunkNeed) error {
	n := need.Length
	defer r.progress.bytesDone.Add(n)
	id, _ := repository.ParseChunkID(c) // every id was checked when the manifest was read
	release, err := r.limits.Memory.reserve(ctx, verifyChunkMemory(n))
	if err != nil {
		return err
	}
	data, err := r.repo.GetChunk(ctx, id, nil)
	release() // data is dropped below
	if err == nil && !need.Fits(int64(len(data))) {
		err = fmt.Errorf("%w: %d bytes, want %d", repository.ErrCorrupt, len(data), n)
	}
	switch {
	case errors.Is(err, sinks.ErrNotFound):
		r.mu.Lock()
		r.rep.Missing = append(r.rep.Missing, c)
		r.mu.Unlock()
	case errors.Is(err, repository.ErrCorrupt):
		r.mu.Lock()
		r.rep.Corrupt = append(r.rep.Corrupt, c)
		r.mu.Unlock()
	case err != nil:
		return err
	default:
		r.progress.bytesRead.Add(n)
	}
	return nil
}

// compare reads every chunk position of the source and compares it with the
// backup's content there, returning the offsets that differ.
func (r *verifyRun) compare(ctx context.Context, src backends.Source) ([]int64, error) {
	m := r.m
	if src.Size() != m.Size {
		return nil, fmt.Errorf("%w: the source has %d bytes, backup %s %d", ErrVerifyFailed, src.Size(), m.ID, m.Size)
	}
	var mu sync.Mutex
	var differ []int64
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(r.limits.concurrency())
	for i := range m.Chunks {
		safe.Go(g, func() error {
			same, err := r.samePosition(gctx, src, i)
			if err != nil || same {
				return err
			}
			mu.Lock()
			differ = append(differ, int64(i)*m.ChunkSize)
			mu.Unlock()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	slices.Sort(differ)
	return differ, nil
}

// samePosition reports whether the source holds the backup's content at chunk
// position i.
func (r *verifyRun) samePosition(ctx context.Context, src backends.Source, i int) (bool, error) {
	m := r.m
	off, n := int64(i)*m.ChunkSize, m.ChunkLen(i)
	release, err := r.limits.Memory.reserve(ctx, n+restoreChunkMemory(m.ChunkSize))
	if err != nil {
		return false, err
	}
	defer release()
	have := make([]byte, n)
	if _, err := src.ReadAt(ctx, have, off); err != nil {
		return false, fmt.Errorf("read source at %d: %w", off, err)
	}
	if m.ReadsAsZero(i) {
		return isZero(have), nil
	}
	want, _, err := r.repo.PositionReader(m, 0).Read(ctx, i, &repository.PositionBuffers{})
	if err != nil {
		return false, err
	}
	return bytes.Equal(have, want), nil
}
