package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/blockferry/blockferry/jobs"
)

// Event types (DESIGN.md).
const (
	EventStarted   = "io.blockferry.job.started"
	EventProgress  = "io.blockferry.job.progress"
	EventRetrying  = "io.blockferry.job.retrying"
	EventCompleted = "io.blockferry.job.completed"
	EventFailed    = "io.blockferry.job.failed"
	EventCancelled = "io.blockferry.job.cancelled"
)

// Terminal reports whether an event type ends a job.
func Terminal(eventType string) bool {
	return eventType == EventCompleted || eventType == EventFailed || eventType == EventCancelled
}

// Event is a CloudEvents 1.0 event in structured JSON mode.
type Event struct {
	SpecVersion     string    `json:"specversion"`
	ID              string    `json:"id"`
	Source          string    `json:"source"`
	Type            string    `json:"type"`
	Subject         string    `json:"subject"`
	Time            time.Time `json:"time"`
	DataContentType string    `json:"datacontenttype"`
	Data            EventData `json:"data"`
}

// EventData is the payload of every blockferry event; fields apply by type.
type EventData struct {
	JobID   string            `json:"job_id"`
	Kind    string            `json:"kind,omitempty"`
	Disk    string            `json:"disk,omitempty"`
	Attempt int               `json:"attempt"`
	Worker  string            `json:"worker"`
	Labels  map[string]string `json:"labels,omitempty"`

	BytesTotal        int64   `json:"bytes_total,omitempty"`
	BytesDone         int64   `json:"bytes_done,omitempty"`
	BytesWritten      int64   `json:"bytes_written,omitempty"`
	BytesDeduplicated int64   `json:"bytes_deduplicated,omitempty"`
	RateBytesPerSec   float64 `json:"rate_bytes_per_second,omitempty"`
	ETASeconds        float64 `json:"eta_seconds,omitempty"`
	// Export is the URI of a serve job's export, in its progress events from the
	// moment it accepts clients.
	Export string `json:"export,omitempty"`

	// Completed events: the backup id of a backup (or the backup restored or
	// verified) and the job's figures.
	Backup  string        `json:"backup,omitempty"`
	Stats   any           `json:"stats,omitempty"`
	Error   *jobs.Failure `json:"error,omitempty"`
	RetryIn float64       `json:"retry_in_seconds,omitempty"`
}

func (d *EventData) setProgress(p jobs.ProgressSnapshot) {
	d.BytesTotal, d.BytesDone, d.BytesWritten, d.BytesDeduplicated = p.BytesTotal, p.BytesDone, p.BytesWritten, p.BytesDeduplicated
	d.RateBytesPerSec, d.ETASeconds, d.Export = p.RateBytesPerSec, p.ETASeconds, p.Export
}

// publisher sends events of one worker.
type publisher struct {
	js     jetstream.JetStream
	topo   Topology
	source string
}

// publish sends an event. id makes it idempotent: JetStream drops a second event
// with the same id within the duplicate window, so a terminal event re-published
// after a crash is not seen twice.
func (p *publisher) publish(ctx context.Context, typ, id string, d EventData) error {
	ev := Event{
		SpecVersion: "1.0", ID: id, Source: p.source, Type: typ, Subject: d.JobID,
		Time: time.Now().UTC(), DataContentType: "application/json", Data: d,
	}
	body, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	msg := &nats.Msg{Subject: p.topo.EventSubject(d.JobID), Data: body, Header: nats.Header{}}
	msg.Header.Set(jetstream.MsgIDHeader, id)
	msg.Header.Set("Content-Type", "application/cloudevents+json")
	if _, err := p.js.PublishMsg(ctx, msg); err != nil {
		return fmt.Errorf("publish %s event of job %s: %w", typ, d.JobID, err)
	}
	return nil
}
