package worker

import (
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"
)

// config is what the options set.
type config struct {
	topo      Topology
	name      string
	slots     int
	grace     time.Duration
	heartbeat time.Duration
	log       *zap.Logger
	metrics   Recorder
}

func defaultConfig() config {
	return config{topo: DefaultTopology(), name: "worker", slots: 1, grace: 5 * time.Minute, log: zap.NewNop(), metrics: nopRecorder{}}
}

// heartbeatInterval keeps heartbeats well inside the ack wait, so that a healthy
// long job is never redelivered.
func heartbeatInterval(ackWait time.Duration) time.Duration {
	return max(ackWait/4, 250*time.Millisecond)
}

// Option configures a Worker, in the manner of nats.go's jetstream options: an
// option given a value that cannot work makes New return its error.
type Option func(*config) error

// WithTopology sets stream, consumer and bucket names and limits.
func WithTopology(t Topology) Option {
	return func(c *config) error {
		if err := t.validate(); err != nil {
			return err
		}
		c.topo = t
		return nil
	}
}

// WithName names the worker in events and logs.
func WithName(n string) Option {
	return func(c *config) error {
		if n == "" {
			return errors.New("the worker's name must not be empty")
		}
		c.name = n
		return nil
	}
}

// WithJobs is how many jobs the worker runs at once, at least 1.
func WithJobs(n int) Option {
	return func(c *config) error {
		if n < 1 {
			return fmt.Errorf("jobs run at once: %d, must be at least 1", n)
		}
		c.slots = n
		return nil
	}
}

// WithGracePeriod is how long a stopping worker lets running jobs finish before it
// hands them back to the queue; 0 hands them back at once.
func WithGracePeriod(d time.Duration) Option {
	return func(c *config) error {
		if d < 0 {
			return fmt.Errorf("grace period %s is negative", d)
		}
		c.grace = d
		return nil
	}
}

// WithLogger sets the logger.
func WithLogger(l *zap.Logger) Option {
	return func(c *config) error {
		if l == nil {
			return errors.New("nil logger")
		}
		c.log = l
		return nil
	}
}

// WithMetrics reports jobs, heartbeats and bytes to r.
func WithMetrics(r Recorder) Option {
	return func(c *config) error {
		if r == nil {
			return errors.New("nil metrics recorder")
		}
		c.metrics = r
		return nil
	}
}

// Recorder receives the worker's measurements; internal/metrics implements it for
// Prometheus.
type Recorder interface {
	JobStarted(kind string)
	// JobFinished ends an attempt: outcome is completed, failed, cancelled,
	// retrying or requeued; code is the error code of a failure.
	JobFinished(kind, outcome, code string, d time.Duration)
	Heartbeat(err error)
	// Bytes counts what a job of kind read and wrote: for a backup, the source and
	// the repository; for a restore, the repository and the target.
	Bytes(kind string, read, written, deduplicated int64)
}

type nopRecorder struct{}

func (nopRecorder) JobStarted(string)                                 {}
func (nopRecorder) JobFinished(string, string, string, time.Duration) {}
func (nopRecorder) Heartbeat(error)                                   {}
func (nopRecorder) Bytes(string, int64, int64, int64)                 {}
