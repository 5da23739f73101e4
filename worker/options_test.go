package worker

import (
	"testing"
	"time"
)

func TestNewRejectsOptionsThatCannotWork(t *testing.T) {
	short := DefaultTopology()
	short.AckWait = 10 * time.Millisecond
	for _, c := range []struct {
		name string
		opt  Option
		ok   bool
	}{
		{"one job", WithJobs(1), true},
		{"no jobs", WithJobs(0), false},
		{"negative jobs", WithJobs(-2), false},
		{"no grace period", WithGracePeriod(0), true},
		{"negative grace period", WithGracePeriod(-time.Second), false},
		{"named", WithName("w1"), true},
		{"empty name", WithName(""), false},
		{"default topology", WithTopology(DefaultTopology()), true},
		{"ack wait too short", WithTopology(short), false},
		{"empty topology", WithTopology(Topology{}), false},
		{"nil logger", WithLogger(nil), false},
		{"nil metrics", WithMetrics(nil), false},
	} {
		t.Run(c.name, func(t *testing.T) {
			w, err := New(nil, nil, c.opt)
			if c.ok && (err != nil || w == nil) {
				t.Errorf("New: %v, want a worker", err)
			}
			if !c.ok && (err == nil || w != nil) {
				t.Errorf("New made a worker, want an error")
			}
		})
	}
}
