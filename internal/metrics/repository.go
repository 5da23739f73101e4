package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/blockferry/blockferry/sinks/repository"
)

// repositoryGauges describe each repository as the last prune job on this
// process found it; a repository no prune job ran on here has none.
type repositoryGauges struct {
	StoredBytes *prometheus.GaugeVec // repository
	Chunks      *prometheus.GaugeVec // repository
	Backups     *prometheus.GaugeVec // repository
	LastPrune   *prometheus.GaugeVec // repository, outcome
}

func newRepositoryGauges(ns string) repositoryGauges {
	gauge := func(name, help string, labels ...string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: name, Help: help}, labels)
	}
	return repositoryGauges{
		StoredBytes: gauge("repository_stored_bytes", "Bytes of chunks stored in the repository after the last successful prune job, including chunks condemned but not yet deleted.", "repository"),
		Chunks:      gauge("repository_chunks", "Chunks stored in the repository after the last successful prune job.", "repository"),
		Backups:     gauge("repository_backups", "Backups in the repository at the last successful prune job.", "repository"),
		LastPrune: gauge("repository_last_prune_timestamp_seconds",
			"When the last prune job on the repository ended, by outcome (success, failure): alert when success is old.", "repository", "outcome"),
	}
}

func (g repositoryGauges) collectors() []prometheus.Collector {
	return []prometheus.Collector{g.StoredBytes, g.Chunks, g.Backups, g.LastPrune}
}

// ObservePrune records how a prune job's collection round on a repository
// ended (jobs.WithPruneObserver): the figures of a successful one, and the time
// of either.
func (m *Metrics) ObservePrune(repo string, rep *repository.PruneReport, err error) {
	now := float64(time.Now().UnixNano()) / 1e9
	if err != nil {
		m.Repository.LastPrune.WithLabelValues(repo, "failure").Set(now)
		return
	}
	m.Repository.LastPrune.WithLabelValues(repo, "success").Set(now)
	m.Repository.StoredBytes.WithLabelValues(repo).Set(float64(rep.BytesTotal - rep.BytesFreed))
	m.Repository.Chunks.WithLabelValues(repo).Set(float64(rep.ChunksTotal - rep.ChunksDeleted))
	m.Repository.Backups.WithLabelValues(repo).Set(float64(rep.Backups))
}
