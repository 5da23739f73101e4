package repository

import (
	"slices"
	"testing"
	"time"
	_ "time/tzdata" // Europe/Berlin without the system's zone files
)

func TestRetentionPolicy(t *testing.T) {
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	at := func(s string) time.Time {
		ts, err := time.Parse(time.RFC3339, s)
		if err != nil {
			t.Fatal(err)
		}
		return ts
	}
	backups := func(times ...string) []*Manifest {
		var out []*Manifest
		for i, s := range times {
			out = append(out, &Manifest{ID: string(rune('a' + i)), Disk: "vm1/vda", Started: at(s)})
		}
		return out
	}
	// a..g over two weeks; 2026-11-23 is a Monday.
	week := backups("2026-11-20T10:00:00Z", "2026-11-22T22:30:00Z", "2026-11-22T23:30:00Z",
		"2026-11-23T00:30:00Z", "2026-11-30T09:00:00Z", "2026-11-30T18:00:00Z", "2026-12-01T01:00:00Z")
	labelled := backups("2026-01-01T00:00:00Z", "2026-06-01T00:00:00Z", "2026-06-02T00:00:00Z")
	labelled[0].Labels = map[string]string{"hold": "legal"}
	labelled[1].Labels = map[string]string{"hold": "other"}
	cases := []struct {
		name    string
		policy  RetentionPolicy
		backups []*Manifest
		keep    string
	}{
		{"last 2", RetentionPolicy{Last: 2}, week, "fg"},
		{"daily 4 UTC", RetentionPolicy{Daily: 4}, week, "cdfg"},
		// In Berlin (UTC+1) c (23:30Z) moves to the 23rd, beside d: b is the 22nd's.
		{"daily 4 Berlin", RetentionPolicy{Daily: 4, Location: berlin}, week, "bdfg"},
		// ISO weeks: a-c in week 47, d in 48, e-g in 49 (UTC).
		{"weekly 3 UTC", RetentionPolicy{Weekly: 3}, week, "cdg"},
		{"weekly 3 Berlin", RetentionPolicy{Weekly: 3, Location: berlin}, week, "bdg"},
		{"monthly 5", RetentionPolicy{Monthly: 5}, week, "fg"},
		{"monthly unlimited", RetentionPolicy{Monthly: -1}, week, "fg"},
		{"yearly 1 hourly 2", RetentionPolicy{Yearly: 1, Hourly: 2}, week, "fg"},
		{"within 24h of the newest", RetentionPolicy{Within: 24 * time.Hour}, week, "efg"},
		{"label", RetentionPolicy{Last: 1, Labels: map[string]string{"hold": "legal"}}, labelled, "ac"},
		{"the newest is always kept", RetentionPolicy{Labels: map[string]string{"hold": "none"}}, labelled, "c"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ds, err := c.policy.Apply(slices.Clone(c.backups))
			if err != nil {
				t.Fatal(err)
			}
			var kept []byte
			for _, d := range ds {
				if d.Keep {
					kept = append(kept, d.Backup.ID[0])
				}
			}
			slices.Sort(kept)
			if string(kept) != c.keep {
				t.Fatalf("kept %q, want %q (%+v)", kept, c.keep, ds)
			}
		})
	}
	if _, err := (RetentionPolicy{}).Apply(week); err == nil {
		t.Fatal("an empty policy was applied")
	}
}
