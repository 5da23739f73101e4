package jobs

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/blockferry/blockferry/sinks"
	"github.com/blockferry/blockferry/sinks/repository"
)

// Retention is a prune job's retention policy for its disk: the rules of
// `blockferry forget`, with their meaning (repository.RetentionPolicy). Each
// count keeps the newest backup of each of the last N periods that hold one
// (-1: of all of them); the newest backup of the disk is always kept.
type Retention struct {
	KeepLast    int `json:"keep_last,omitempty"`
	KeepHourly  int `json:"keep_hourly,omitempty"`
	KeepDaily   int `json:"keep_daily,omitempty"`
	KeepWeekly  int `json:"keep_weekly,omitempty"`
	KeepMonthly int `json:"keep_monthly,omitempty"`
	KeepYearly  int `json:"keep_yearly,omitempty"`
	// KeepWithin keeps every backup started within this long of the newest: a
	// Go duration such as "48h".
	KeepWithin string `json:"keep_within,omitempty"`
	// KeepLabels keeps every backup carrying one of these label pairs.
	KeepLabels map[string]string `json:"keep_labels,omitempty"`
	// TimeZone is the IANA time zone periods are counted in; UTC when empty.
	TimeZone string `json:"time_zone,omitempty"`
}

// Policy is the repository's form of the rules; it fails on rules that do not
// parse and on an empty policy (repository.ErrEmptyPolicy).
func (r Retention) Policy() (repository.RetentionPolicy, error) {
	p := repository.RetentionPolicy{
		Last: r.KeepLast, Hourly: r.KeepHourly, Daily: r.KeepDaily, Weekly: r.KeepWeekly,
		Monthly: r.KeepMonthly, Yearly: r.KeepYearly, Labels: r.KeepLabels, Location: time.UTC,
	}
	for _, n := range []int{p.Last, p.Hourly, p.Daily, p.Weekly, p.Monthly, p.Yearly} {
		if n < -1 {
			return p, fmt.Errorf("retention count %d: want -1 (all) or more", n)
		}
	}
	if r.KeepWithin != "" {
		d, err := time.ParseDuration(r.KeepWithin)
		if err != nil || d <= 0 {
			return p, fmt.Errorf("keep_within %q: want a positive duration such as 48h", r.KeepWithin)
		}
		p.Within = d
	}
	if len(r.KeepLabels) > maxLabels {
		return p, fmt.Errorf("keep_labels: %d, at most %d", len(r.KeepLabels), maxLabels)
	}
	for k, v := range r.KeepLabels {
		if k == "" || len(k) > maxLabelLength || len(v) > maxLabelLength {
			return p, fmt.Errorf("keep_labels %q: keys and values of 1 to %d characters", k, maxLabelLength)
		}
	}
	if r.TimeZone != "" {
		loc, err := time.LoadLocation(r.TimeZone)
		if err != nil {
			return p, fmt.Errorf("time_zone %q: %w", r.TimeZone, err)
		}
		p.Location = loc
	}
	if p.Empty() {
		return p, repository.ErrEmptyPolicy
	}
	return p, nil
}

// validatePrune checks the fields of a prune job: a disk and its retention
// policy together (forget, then collect), or neither (collect only).
func (s *Spec) validatePrune() error {
	switch {
	case s.Source != nil || s.Target != nil || s.Parent != "" || s.Backup != "" || s.Checkpoint != "" || s.SinceCheckpoint != "":
		return errors.New("a prune takes no source, target, parent, backup or checkpoint")
	case s.Options != (Options{}):
		return errors.New("a prune takes no options")
	case (s.Disk == "") != (s.Retention == nil):
		return errors.New("a prune takes a disk and its retention rules together, or neither (collect only)")
	case s.Retention != nil:
		_, err := s.Retention.Policy()
		return err
	}
	return nil
}

// PruneResult is what a prune job did: the backups it forgot and what the
// garbage collection round deleted and condemned.
type PruneResult struct {
	Disk      string   `json:"disk,omitempty"`
	Forgotten []string `json:"forgotten"`
	Kept      int      `json:"kept"`
	// Skipped are objects under backups/ that could not be read; the policy did
	// not see them and the prune left them alone.
	Skipped []repository.BadObject `json:"skipped,omitempty"`
	repository.PruneReport
}

// PruneObserver learns how each prune job's garbage collection round ended: the
// repository's location (no credentials), and the report or the error. A worker
// turns it into gauges of the repository.
type PruneObserver func(repository string, rep *repository.PruneReport, err error)

// WithPruneObserver reports the end of every prune job's collection round.
func WithPruneObserver(o PruneObserver) RunnerOption { return func(c *runnerConfig) { c.onPrune = o } }

// prune runs a prune job: it forgets the disk's backups its retention policy
// does not keep, then runs one round of garbage collection. Its progress counts
// the stored bytes the sweep has examined; the total is known only at the end.
// A retry of a failed prune is safe: forgetting and collecting are idempotent.
func (r *Runner) prune(ctx context.Context, store sinks.Store, s Spec, progress *Progress) (Result, error) {
	res, err := pruneRepository(ctx, store, r.cfg.key, s, progress)
	if r.cfg.onPrune != nil {
		var rep *repository.PruneReport
		if err == nil {
			rep = &res.PruneReport
		}
		r.cfg.onPrune(store.Location(), rep, err)
	}
	if err != nil {
		return Result{}, err
	}
	return Result{Prune: res}, nil
}

func pruneRepository(ctx context.Context, store sinks.Store, key []byte, s Spec, progress *Progress) (*PruneResult, error) {
	repo, err := repository.Open(ctx, store, key)
	if err != nil {
		return nil, err
	}
	res := &PruneResult{Disk: s.Disk, Forgotten: []string{}}
	if s.Retention != nil {
		p, _ := s.Retention.Policy() // validated with the spec
		ds, forgotten, bad, err := repo.ForgetByPolicy(ctx, s.Disk, p, false)
		if err != nil {
			return nil, err
		}
		res.Forgotten = append(res.Forgotten, forgotten...)
		res.Kept, res.Skipped = len(ds)-len(forgotten), bad
	}
	rep, err := repo.Prune(ctx, repository.PruneOptions{OnChunk: func(n int64) { progress.bytesDone.Add(n) }})
	if err != nil {
		return nil, err
	}
	progress.bytesTotal.Store(progress.bytesDone.Load())
	res.PruneReport = *rep
	return res, nil
}
