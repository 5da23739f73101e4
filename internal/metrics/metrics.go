// Package metrics holds blockferry's Prometheus metrics and the HTTP endpoints that
// serve them with the health checks.
package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metrics are the collectors of one process, registered on their own registry.
type Metrics struct {
	Registry *prometheus.Registry

	JobsStarted    *prometheus.CounterVec   // kind
	JobsFinished   *prometheus.CounterVec   // kind, outcome
	JobDuration    *prometheus.HistogramVec // kind, outcome
	JobsInFlight   *prometheus.GaugeVec     // kind
	JobRetries     *prometheus.CounterVec   // kind, code
	Heartbeats     prometheus.Counter
	HeartbeatFails prometheus.Counter
	BytesTotal     *prometheus.CounterVec   // direction: read, written, deduplicated
	NBDLatency     *prometheus.HistogramVec // op
	NBDErrors      *prometheus.CounterVec   // op
	StoreLatency   *prometheus.HistogramVec // backend, op
	StoreErrors    *prometheus.CounterVec   // backend, op
	Fallbacks      *prometheus.CounterVec   // reason
	Repository     repositoryGauges         // from the last prune job (repository.go)
}

// New makes and registers the collectors, with Go runtime and process metrics.
func New() *Metrics {
	r := prometheus.NewRegistry()
	f := func(c prometheus.Collector) { r.MustRegister(c) }
	m := &Metrics{Registry: r}
	const ns = "blockferry"
	m.JobsStarted = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "jobs_started_total",
		Help: "Job attempts started, by kind."}, []string{"kind"})
	m.JobsFinished = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "jobs_finished_total",
		Help: "Job attempts finished, by kind and outcome (completed, failed, cancelled, retrying, requeued)."}, []string{"kind", "outcome"})
	m.JobDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "job_duration_seconds",
		Help:    "Duration of job attempts, by kind and outcome.",
		Buckets: prometheus.ExponentialBuckets(0.5, 2, 16)}, []string{"kind", "outcome"})
	m.JobsInFlight = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "jobs_in_flight",
		Help: "Jobs running now, by kind."}, []string{"kind"})
	m.JobRetries = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "job_retries_total",
		Help: "Job attempts that failed transiently and were handed back for a retry, by kind and error code."}, []string{"kind", "code"})
	m.Heartbeats = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "heartbeats_total",
		Help: "InProgress heartbeats sent for running jobs."})
	m.HeartbeatFails = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "heartbeat_errors_total",
		Help: "InProgress heartbeats that failed."})
	m.BytesTotal = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "bytes_total",
		Help: "Bytes jobs read, wrote and deduplicated, by job kind and direction: a backup reads its source and writes the repository (after compression), a restore reads the repository and writes its target."}, []string{"kind", "direction"})
	m.NBDLatency = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "source_request_duration_seconds",
		Help:    "Latency of source (NBD or file) requests, by operation.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10)}, []string{"op"})
	m.NBDErrors = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "source_request_errors_total",
		Help: "Failed source requests, by operation."}, []string{"op"})
	m.StoreLatency = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "store_request_duration_seconds",
		Help:    "Latency of repository store requests (S3 or file), by backend and operation.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10)}, []string{"backend", "op"})
	m.StoreErrors = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "store_request_errors_total",
		Help: "Failed repository store requests, by backend and operation."}, []string{"backend", "op"})
	m.Fallbacks = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "backup_fallbacks_total",
		Help: "Backups asked to be incremental that completed as full backups because their chain was broken, by reason (bitmap_missing, parent_missing, disk_resized, checkpoint_mismatch)."}, []string{"reason"})
	m.Repository = newRepositoryGauges(ns)
	for _, c := range append(m.Repository.collectors(), m.Fallbacks, m.JobsStarted, m.JobsFinished, m.JobDuration, m.JobsInFlight, m.JobRetries,
		m.Heartbeats, m.HeartbeatFails, m.BytesTotal, m.NBDLatency, m.NBDErrors, m.StoreLatency, m.StoreErrors,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})) {
		f(c)
	}
	return m
}

// ObserveSource records one source request; it fits backends.Instrumented.
func (m *Metrics) ObserveSource(op string, d time.Duration, err error) {
	m.NBDLatency.WithLabelValues(op).Observe(d.Seconds())
	if err != nil {
		m.NBDErrors.WithLabelValues(op).Inc()
	}
}

// ObserveStore records one store request; it fits sinks.Instrumented.
func (m *Metrics) ObserveStore(backend, op string, d time.Duration, err error) {
	m.StoreLatency.WithLabelValues(backend, op).Observe(d.Seconds())
	if err != nil {
		m.StoreErrors.WithLabelValues(backend, op).Inc()
	}
}

// JobStarted counts an attempt and marks it in flight (worker.Recorder).
func (m *Metrics) JobStarted(kind string) {
	m.JobsStarted.WithLabelValues(kind).Inc()
	m.JobsInFlight.WithLabelValues(kind).Inc()
}

// JobFinished counts an attempt's outcome and duration (worker.Recorder).
func (m *Metrics) JobFinished(kind, outcome, code string, d time.Duration) {
	m.JobsInFlight.WithLabelValues(kind).Dec()
	m.JobsFinished.WithLabelValues(kind, outcome).Inc()
	m.JobDuration.WithLabelValues(kind, outcome).Observe(d.Seconds())
	if outcome == "retrying" {
		m.JobRetries.WithLabelValues(kind, code).Inc()
	}
}

// Heartbeat counts an InProgress heartbeat (worker.Recorder).
func (m *Metrics) Heartbeat(err error) {
	m.Heartbeats.Inc()
	if err != nil {
		m.HeartbeatFails.Inc()
	}
}

// Bytes adds to the byte counters (worker.Recorder).
func (m *Metrics) Bytes(kind string, read, written, deduplicated int64) {
	m.BytesTotal.WithLabelValues(kind, "read").Add(float64(read))
	m.BytesTotal.WithLabelValues(kind, "written").Add(float64(written))
	m.BytesTotal.WithLabelValues(kind, "deduplicated").Add(float64(deduplicated))
}

// BackupFallback counts a backup that completed as a full backup in place of an
// incremental whose chain was broken (jobs.WithFallbackObserver).
func (m *Metrics) BackupFallback(reason string) { m.Fallbacks.WithLabelValues(reason).Inc() }
