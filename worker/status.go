package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/blockferry/blockferry/jobs"
)

// Job states kept in the status bucket.
const (
	StateQueued    = "queued"
	StateRunning   = "running"
	StateRetrying  = "retrying"
	StateCompleted = "completed"
	StateFailed    = "failed"
	StateCancelled = "cancelled"
)

// TerminalState reports whether a job in state s is over.
func TerminalState(s string) bool {
	return s == StateCompleted || s == StateFailed || s == StateCancelled
}

// JobStatus is a job's latest state, kept under its id in the status bucket so it
// can be queried after the fact.
type JobStatus struct {
	JobID   string `json:"job_id"`
	Kind    string `json:"kind,omitempty"`
	Disk    string `json:"disk,omitempty"`
	State   string `json:"state"`
	Attempt int    `json:"attempt,omitempty"`
	// Seq is the stream sequence of the job message the status is of: a job id
	// reused by another message is told apart by it.
	Seq      uint64                 `json:"stream_seq,omitempty"`
	Worker   string                 `json:"worker,omitempty"`
	Updated  time.Time              `json:"updated"`
	Backup   string                 `json:"backup,omitempty"`
	Error    *jobs.Failure          `json:"error,omitempty"`
	Progress *jobs.ProgressSnapshot `json:"progress,omitempty"`
	Stats    any                    `json:"stats,omitempty"`
}

// describe names the job message a status is of and its outcome, for the
// failed event of a job message that reuses its id.
func (st JobStatus) describe() string {
	s := fmt.Sprintf("job message %d is %s", st.Seq, st.State)
	switch {
	case st.Error != nil:
		s += fmt.Sprintf(" (%s: %s)", st.Error.Code, st.Error.Message)
	case st.Backup != "":
		s += " (backup " + st.Backup + ")"
	}
	if !st.Updated.IsZero() {
		s += " since " + st.Updated.Format(time.RFC3339)
	}
	return s
}

// statusStore reads and writes job states.
type statusStore struct{ kv jetstream.KeyValue }

// get returns a job's status and the entry's revision; ok is false when the job is
// unknown.
func (s statusStore) get(ctx context.Context, id string) (JobStatus, uint64, bool, error) {
	e, err := s.kv.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return JobStatus{}, 0, false, nil
	}
	if err != nil {
		return JobStatus{}, 0, false, err
	}
	var st JobStatus
	if err := json.Unmarshal(e.Value(), &st); err != nil {
		return JobStatus{}, e.Revision(), true, err
	}
	return st, e.Revision(), true, nil
}

// put records a non-terminal state, unless the job already ended or a later
// attempt has it: a late progress update must not bring a finished job back to
// life, nor an attempt that lost its delivery overwrite the one that has it.
func (s statusStore) put(ctx context.Context, st JobStatus) error {
	_, err := s.transition(ctx, st)
	return err
}

var (
	// errStatusContended: other writers kept changing the entry under this one.
	errStatusContended = errors.New("status: too many concurrent updates")
	// errSuperseded: a later attempt of the same job message wrote the status;
	// the delivery is that attempt's.
	errSuperseded = errors.New("status: a later attempt of the job has it")
)

// transition writes st if the job has not ended yet and no later attempt of the
// same job message wrote it, with compare-and-set so that two writers cannot
// both end it. It reports whether st was written.
func (s statusStore) transition(ctx context.Context, st JobStatus) (bool, error) {
	st.Updated = time.Now().UTC()
	body, err := json.Marshal(st)
	if err != nil {
		return false, err
	}
	for range 5 {
		cur, rev, ok, err := s.get(ctx, st.JobID)
		if err != nil {
			return false, err
		}
		if ok && TerminalState(cur.State) {
			// A retry after a write that landed but whose answer was lost
			// finds its own write.
			return cur.Seq == st.Seq && cur.Attempt == st.Attempt && cur.State == st.State && cur.Worker == st.Worker, nil
		}
		if ok && cur.Seq == st.Seq && cur.Attempt > st.Attempt {
			return false, errSuperseded
		}
		if ok {
			_, err = s.kv.Update(ctx, st.JobID, body, rev)
		} else {
			_, err = s.kv.Create(ctx, st.JobID, body)
		}
		if err == nil {
			return true, nil
		}
		// Both the R1 (10071) and the replicated (10164) answer to a lost race.
		if !errors.Is(err, jetstream.ErrKeyExists) && !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return false, err
		}
	}
	return false, errStatusContended
}
