// Package worker runs blockferry jobs from NATS JetStream: it provisions the
// streams, pulls jobs as it has room for them, runs them with the jobs engine, and
// publishes their progress and outcome as CloudEvents.
package worker

import (
	"fmt"
	"time"
)

// Names of the JetStream objects (DESIGN.md, docs/JOBS.md).
const (
	DefaultPrefix       = "blockferry"
	DefaultJobsStream   = "BLOCKFERRY_JOBS"
	DefaultEventsStream = "BLOCKFERRY_EVENTS"
	DefaultConsumer     = "workers"
	DefaultStatusBucket = "BLOCKFERRY_STATUS"
	DefaultCancelBucket = "BLOCKFERRY_CANCEL"
)

// Topology is where jobs, events, status and cancellations live. Every worker,
// submitter and monitor of one deployment must agree on it.
type Topology struct {
	Prefix       string
	JobsStream   string
	EventsStream string
	Consumer     string
	StatusBucket string
	CancelBucket string
	// Replicas of every stream and bucket: 1 on a single server, 3 on a cluster.
	Replicas int
	// EventsMaxAge bounds how long monitors can replay events.
	EventsMaxAge time.Duration
	// JobsMaxAge drops jobs nobody took in that time; 0 keeps them.
	JobsMaxAge time.Duration
	// AckWait is how long a job may go without a heartbeat before JetStream hands
	// it to another worker.
	AckWait time.Duration
	// MaxDeliver bounds the attempts of a job.
	MaxDeliver int
	// Backoff is the delay before each retry of a job that failed transiently.
	Backoff []time.Duration
}

// DefaultTopology is what a worker and the CLI use unless told otherwise.
func DefaultTopology() Topology {
	return Topology{
		Prefix: DefaultPrefix, JobsStream: DefaultJobsStream, EventsStream: DefaultEventsStream,
		Consumer: DefaultConsumer, StatusBucket: DefaultStatusBucket, CancelBucket: DefaultCancelBucket,
		Replicas: 1, EventsMaxAge: 7 * 24 * time.Hour, AckWait: 60 * time.Second, MaxDeliver: 5,
		Backoff: []time.Duration{5 * time.Second, 30 * time.Second, 2 * time.Minute, 10 * time.Minute},
	}
}

// JobSubject is where jobs of a kind are published.
func (t Topology) JobSubject(kind string) string { return t.Prefix + ".jobs." + kind }

// EventSubject is where a job's events are published.
func (t Topology) EventSubject(jobID string) string { return t.Prefix + ".events." + jobID }

// retryDelay is the backoff before attempt+1.
func (t Topology) retryDelay(attempt int) time.Duration {
	if len(t.Backoff) == 0 {
		return 5 * time.Second
	}
	return t.Backoff[min(max(attempt-1, 0), len(t.Backoff)-1)]
}

func (t Topology) validate() error {
	switch {
	case t.Prefix == "" || t.JobsStream == "" || t.EventsStream == "" || t.Consumer == "" || t.StatusBucket == "" || t.CancelBucket == "":
		return fmt.Errorf("topology: prefix, stream, consumer and bucket names must not be empty")
	case t.AckWait < time.Second:
		return fmt.Errorf("topology: ack wait %s is too short", t.AckWait)
	case t.MaxDeliver < 1:
		return fmt.Errorf("topology: max deliver must be at least 1")
	case t.Replicas < 1 || t.Replicas > 5:
		return fmt.Errorf("topology: replicas must be 1 to 5")
	}
	return nil
}
