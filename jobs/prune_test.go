package jobs

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/blockferry/blockferry/sinks"
	_ "github.com/blockferry/blockferry/sinks/file"
	"github.com/blockferry/blockferry/sinks/repository"
)

func TestDecodePruneSpec(t *testing.T) {
	const good = `{"spec_version":1,"id":"prune-vm1","kind":"prune","disk":"vm1/vda",
		"retention":{"keep_last":7,"keep_daily":14,"keep_weekly":-1,"keep_within":"48h","keep_labels":{"hold":"legal"},"time_zone":"Europe/Berlin"}}`
	s, err := DecodeSpec([]byte(good))
	if err != nil {
		t.Fatalf("good prune job: %v", err)
	}
	p, err := s.Retention.Policy()
	if err != nil || p.Last != 7 || p.Daily != 14 || p.Weekly != -1 || p.Within != 48*time.Hour ||
		p.Labels["hold"] != "legal" || p.Location.String() != "Europe/Berlin" {
		t.Errorf("policy %+v, %v", p, err)
	}
	if _, err := DecodeSpec([]byte(`{"spec_version":1,"id":"gc","kind":"prune"}`)); err != nil {
		t.Errorf("a prune that only collects: %v", err)
	}
	for name, doc := range map[string]string{
		"retention without disk": `{"spec_version":1,"id":"j","kind":"prune","retention":{"keep_last":1}}`,
		"disk without retention": `{"spec_version":1,"id":"j","kind":"prune","disk":"d"}`,
		"empty retention":        `{"spec_version":1,"id":"j","kind":"prune","disk":"d","retention":{}}`,
		"bad within":             `{"spec_version":1,"id":"j","kind":"prune","disk":"d","retention":{"keep_within":"2 days"}}`,
		"bad time zone":          `{"spec_version":1,"id":"j","kind":"prune","disk":"d","retention":{"keep_last":1,"time_zone":"Mars/Olympus"}}`,
		"negative count":         `{"spec_version":1,"id":"j","kind":"prune","disk":"d","retention":{"keep_last":-2}}`,
		"options":                `{"spec_version":1,"id":"j","kind":"prune","options":{"concurrency":2}}`,
		"source":                 `{"spec_version":1,"id":"j","kind":"prune","source":{"uri":"nbd://h"}}`,
		"retention on a backup":  `{"spec_version":1,"id":"j","kind":"backup","disk":"d","source":{"uri":"nbd://h"},"retention":{"keep_last":1}}`,
		"unknown retention rule": `{"spec_version":1,"id":"j","kind":"prune","disk":"d","retention":{"keep_forever":1}}`,
	} {
		if _, err := DecodeSpec([]byte(doc)); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
}

// TestPruneJobReportsToObserver: a prune job hands its collection round's
// report, or its failure, to the runner's prune observer.
func TestPruneJobReportsToObserver(t *testing.T) {
	dir := t.TempDir()
	store, err := sinks.OpenStore(context.Background(), "file://"+dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := repository.Init(context.Background(), store, repository.InitOptions{ChunkSize: 1 << 20, Compression: "zstd"}); err != nil {
		t.Fatal(err)
	}
	type call struct {
		repo string
		rep  *repository.PruneReport
		err  error
	}
	var calls []call
	r := NewRunner(WithPruneObserver(func(repo string, rep *repository.PruneReport, err error) { calls = append(calls, call{repo, rep, err}) }))
	spec := Spec{SpecVersion: SpecVersion, ID: "gc", Kind: KindPrune, Repository: "file://" + dir}
	res, err := r.Run(context.Background(), spec, nil)
	if err != nil || res.Prune == nil {
		t.Fatalf("prune of an empty repository: %+v, %v", res, err)
	}
	spec.Repository = "file://" + filepath.Join(dir, "none")
	if _, err := r.Run(context.Background(), spec, nil); err == nil {
		t.Fatal("prune of no repository succeeded")
	}
	if len(calls) != 2 || calls[0].err != nil || calls[0].rep == nil || calls[0].repo != store.Location() ||
		calls[1].err == nil || calls[1].rep != nil {
		t.Fatalf("observer calls %+v", calls)
	}
}
