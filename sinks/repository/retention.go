package repository

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"
)

// RetentionPolicy says which backups of a disk to keep, with the meaning restic's
// and Proxmox's forget flags have: each count rule keeps the newest backup of each
// of the N most recent periods (hours, days, ISO weeks, months, years) that hold a
// backup; Last keeps the N newest; Within keeps every backup started within that
// long of the disk's newest; Labels keeps every backup that carries one of the
// label pairs. A backup kept by any rule is kept, and the newest backup of each
// disk is always kept. A negative count means no limit.
type RetentionPolicy struct {
	Last, Hourly, Daily, Weekly, Monthly, Yearly int
	Within                                       time.Duration
	Labels                                       map[string]string
	// Location is the time zone that periods are counted in (nil: UTC), so that
	// "daily" means the operator's days.
	Location *time.Location
}

// Empty reports whether the policy has no rule; applying it would keep only the
// newest backup of each disk, which is never what an operator meant.
func (p RetentionPolicy) Empty() bool {
	return p.Last == 0 && p.Hourly == 0 && p.Daily == 0 && p.Weekly == 0 && p.Monthly == 0 && p.Yearly == 0 &&
		p.Within == 0 && len(p.Labels) == 0
}

// ErrEmptyPolicy: a retention policy without any rule.
var ErrEmptyPolicy = errors.New("no retention rule given: nothing would be kept but the newest backup")

// Decision is what a policy decided for one backup, and why.
type Decision struct {
	Backup  *Manifest
	Keep    bool
	Reasons []string // the rules that keep it, e.g. "daily 2026-11-24", "newest"
}

// periodRule is one count rule: the key of the period a time falls in.
type periodRule struct {
	name  string
	count int
	key   func(time.Time) string
}

func (p RetentionPolicy) periodRules() []periodRule {
	return []periodRule{
		{"last", p.Last, nil},
		{"hourly", p.Hourly, func(t time.Time) string { return t.Format("2006-01-02T15") }},
		{"daily", p.Daily, func(t time.Time) string { return t.Format("2006-01-02") }},
		{"weekly", p.Weekly, func(t time.Time) string { y, w := t.ISOWeek(); return fmt.Sprintf("%04d-W%02d", y, w) }},
		{"monthly", p.Monthly, func(t time.Time) string { return t.Format("2006-01") }},
		{"yearly", p.Yearly, func(t time.Time) string { return t.Format("2006") }},
	}
}

// Apply decides for each backup, newest first within each disk; disks come in
// the order of their names.
func (p RetentionPolicy) Apply(backups []*Manifest) ([]Decision, error) {
	if p.Empty() {
		return nil, ErrEmptyPolicy
	}
	byDisk := map[string][]*Manifest{}
	for _, m := range backups {
		byDisk[m.Disk] = append(byDisk[m.Disk], m)
	}
	disks := make([]string, 0, len(byDisk))
	for d := range byDisk {
		disks = append(disks, d)
	}
	slices.Sort(disks)
	var out []Decision
	for _, d := range disks {
		out = append(out, p.applyDisk(byDisk[d])...)
	}
	return out, nil
}

func (p RetentionPolicy) applyDisk(ms []*Manifest) []Decision {
	loc := p.Location
	if loc == nil {
		loc = time.UTC
	}
	slices.SortFunc(ms, func(a, b *Manifest) int { // newest first
		if c := b.Started.Compare(a.Started); c != 0 {
			return c
		}
		return cmp.Compare(b.ID, a.ID)
	})
	out := make([]Decision, len(ms))
	for i, m := range ms {
		out[i].Backup = m
	}
	keep := func(i int, why string) { out[i].Keep = true; out[i].Reasons = append(out[i].Reasons, why) }
	if len(ms) > 0 {
		keep(0, "newest")
	}
	for _, r := range p.periodRules() {
		left, last := r.count, ""
		for i, m := range ms {
			if left == 0 {
				break
			}
			key := "#" + m.ID
			if r.key != nil {
				key = r.key(m.Started.In(loc))
			}
			if key == last {
				continue
			}
			last = key
			left--
			if r.key == nil {
				keep(i, r.name)
			} else {
				keep(i, r.name+" "+key)
			}
		}
	}
	for i, m := range ms {
		if p.Within > 0 && !m.Started.Before(ms[0].Started.Add(-p.Within)) {
			keep(i, "within "+p.Within.String())
		}
		for _, k := range slices.Sorted(maps.Keys(p.Labels)) {
			if v, ok := m.Labels[k]; ok && v == p.Labels[k] {
				keep(i, "label "+k+"="+v)
			}
		}
	}
	return out
}

// ForgetByPolicy applies p to the backups of disk and, unless dryRun, forgets
// those it does not keep. It returns the decisions (newest first), the ids
// forgotten (or that would be) and the objects under backups/ it could not read,
// which it leaves alone.
func (r *Repository) ForgetByPolicy(ctx context.Context, disk string, p RetentionPolicy, dryRun bool) (ds []Decision, forgotten []string, bad []BadObject, err error) {
	list, bad, err := r.ListBackups(ctx, disk)
	if err != nil {
		return nil, nil, nil, err
	}
	if ds, err = p.Apply(list); err != nil {
		return nil, nil, nil, err
	}
	for _, d := range ds {
		if !d.Keep {
			forgotten = append(forgotten, d.Backup.ID)
		}
	}
	if !dryRun && len(forgotten) > 0 {
		if err := r.Forget(ctx, forgotten); err != nil {
			return nil, nil, nil, err
		}
	}
	return ds, forgotten, bad, nil
}
