package metrics

import (
	"errors"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/blockferry/blockferry/sinks/repository"
)

// gauge reads the value of a gauge with the given label values from the registry.
func gauge(t *testing.T, m *Metrics, name string, labels map[string]string) (float64, bool) {
	t.Helper()
	families, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, metric := range f.GetMetric() {
			if matches(metric, labels) {
				return metric.GetGauge().GetValue(), true
			}
		}
	}
	return 0, false
}

func matches(metric *dto.Metric, labels map[string]string) bool {
	n := 0
	for _, l := range metric.GetLabel() {
		if v, ok := labels[l.GetName()]; ok && v == l.GetValue() {
			n++
		}
	}
	return n == len(labels) && n == len(metric.GetLabel())
}

func TestPruneGauges(t *testing.T) {
	m := New()
	const repo = "s3://bkt/bf"
	before := float64(time.Now().Unix())
	m.ObservePrune(repo, &repository.PruneReport{ChunksTotal: 10, BytesTotal: 1000, ChunksDeleted: 3, BytesFreed: 300, Backups: 4}, nil)
	for name, want := range map[string]float64{
		"blockferry_repository_stored_bytes": 700, "blockferry_repository_chunks": 7, "blockferry_repository_backups": 4,
	} {
		if got, ok := gauge(t, m, name, map[string]string{"repository": repo}); !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", name, got, ok, want)
		}
	}
	last := "blockferry_repository_last_prune_timestamp_seconds"
	if at, ok := gauge(t, m, last, map[string]string{"repository": repo, "outcome": "success"}); !ok || at < before {
		t.Errorf("last successful prune at %v, want at least %v", at, before)
	}
	if _, ok := gauge(t, m, last, map[string]string{"repository": repo, "outcome": "failure"}); ok {
		t.Error("a failure recorded after a success only")
	}

	m.ObservePrune(repo, nil, errors.New("store unreachable"))
	if _, ok := gauge(t, m, last, map[string]string{"repository": repo, "outcome": "failure"}); !ok {
		t.Error("the failed prune is not recorded")
	}
	if got, _ := gauge(t, m, "blockferry_repository_chunks", map[string]string{"repository": repo}); got != 7 {
		t.Errorf("a failed prune changed the chunk gauge to %v", got)
	}
}
