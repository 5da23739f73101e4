package main

import (
	"errors"
	"time"

	"github.com/spf13/pflag"

	"github.com/blockferry/blockferry/jobs"
	"github.com/blockferry/blockferry/sinks/repository"
)

// retentionFlags are the --keep-* rules, shared by `forget`, which applies them
// here, and `submit prune`, which hands them to a worker.
type retentionFlags struct {
	r      jobs.Retention
	labels []string
}

func (f *retentionFlags) register(fs *pflag.FlagSet) {
	fs.IntVar(&f.r.KeepLast, "keep-last", 0, "keep the N newest backups")
	fs.IntVar(&f.r.KeepHourly, "keep-hourly", 0, "keep the newest backup of each of the last N hours that have one")
	fs.IntVar(&f.r.KeepDaily, "keep-daily", 0, "keep the newest backup of each of the last N days that have one")
	fs.IntVar(&f.r.KeepWeekly, "keep-weekly", 0, "keep the newest backup of each of the last N ISO weeks that have one")
	fs.IntVar(&f.r.KeepMonthly, "keep-monthly", 0, "keep the newest backup of each of the last N months that have one")
	fs.IntVar(&f.r.KeepYearly, "keep-yearly", 0, "keep the newest backup of each of the last N years that have one")
	fs.StringVar(&f.r.KeepWithin, "keep-within", "", "keep every backup started within this long of the newest (e.g. 48h)")
	fs.StringArrayVar(&f.labels, "keep-label", nil, "keep every backup with this label (key=value, repeatable)")
	fs.StringVar(&f.r.TimeZone, "time-zone", "", "IANA time zone that days, weeks and months are counted in (default: local time for forget, UTC for a prune job)")
}

// retention returns the rules given, or nil when none was.
func (f *retentionFlags) retention() (*jobs.Retention, error) {
	r := f.r
	var err error
	if r.KeepLabels, err = parseLabels(f.labels); err != nil {
		return nil, err
	}
	if _, err := r.Policy(); errors.Is(err, repository.ErrEmptyPolicy) {
		return nil, nil
	}
	return &r, nil
}

// policy is the rules given, counted in the local time zone unless --time-zone
// says otherwise; no rule at all is an error (repository.ErrEmptyPolicy).
func (f *retentionFlags) policy() (repository.RetentionPolicy, error) {
	r := f.r
	var err error
	if r.KeepLabels, err = parseLabels(f.labels); err != nil {
		return repository.RetentionPolicy{}, err
	}
	p, err := r.Policy()
	if err == nil && r.TimeZone == "" {
		p.Location = time.Local
	}
	return p, err
}
