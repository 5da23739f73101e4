package repository

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/blockferry/blockferry/sinks"
)

const checkpointsPrefix = "checkpoints/"

// Checkpoint records how far a running backup got, so that a retry of the same job
// (after a crash, a lost connection, a worker shut down) resumes instead of
// starting over. It is written when a backup starts and now and then while it runs;
// when the manifest is written, Done is emptied and the checkpoint stays as a record
// of which backup the job made. A reader of backups ignores checkpoints.
type Checkpoint struct {
	JobID    string `json:"job_id"`
	BackupID string `json:"backup_id"`
	// Source is the device URI read: a retry must read the same snapshot.
	Source string `json:"source,omitempty"`
	// Message is the job message that wrote the checkpoint (its stream
	// sequence, for a job from the queue): another message with the same job id
	// does not resume it.
	Message   string    `json:"message,omitempty"`
	Disk      string    `json:"disk"`
	Size      int64     `json:"size"`
	ChunkSize int64     `json:"chunk_size"`
	Parent    string    `json:"parent,omitempty"`
	Bitmap    string    `json:"bitmap,omitempty"`
	Started   time.Time `json:"started"`
	Updated   time.Time `json:"updated"`
	// Done maps a chunk position that was read and stored to its chunk id ("" for
	// one that read as zeroes).
	Done map[int]string `json:"done"`
	// Patches holds the patches of the positions in Done that were stored as
	// patches over their base entry (see Manifest.Patches).
	Patches map[int][]Patch `json:"patches,omitempty"`
}

func checkpointName(jobID string) string { return checkpointsPrefix + jobID }
func checkpointAAD(jobID string) string  { return "checkpoint:" + jobID }

// PutCheckpoint writes or replaces a job's checkpoint.
func (r *Repository) PutCheckpoint(ctx context.Context, cp *Checkpoint) error {
	if !ValidID(cp.JobID) {
		return fmt.Errorf("checkpoint: job id %q is not valid", cp.JobID)
	}
	data, err := json.Marshal(cp)
	if err != nil {
		return err
	}
	obj := r.codec.Seal(nil, data, checkpointAAD(cp.JobID), true)
	if err := checkObjectSize("checkpoint of job "+cp.JobID, obj, MaxMetadataObject); err != nil {
		return err
	}
	return r.store.Put(ctx, checkpointName(cp.JobID), obj)
}

// LoadCheckpoint returns a job's checkpoint, or nil when it has none. Through a
// backup attempt's repository (BeginAttempt) it leaves out the positions whose
// chunks garbage collection condemned or deleted.
func (r *Repository) LoadCheckpoint(ctx context.Context, jobID string) (*Checkpoint, error) {
	if !ValidID(jobID) {
		return nil, nil
	}
	obj, err := getObject(ctx, r.store, checkpointName(jobID), nil, MaxMetadataObject)
	if errors.Is(err, sinks.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("checkpoint of job %s: %w", jobID, err)
	}
	cp, err := r.codec.decodeCheckpoint(obj, checkpointAAD(jobID))
	if err != nil {
		return nil, fmt.Errorf("checkpoint of job %s: %w", jobID, err)
	}
	if err := cp.validate(); err != nil {
		return nil, fmt.Errorf("checkpoint of job %s: %w: %v", jobID, ErrCorrupt, err)
	}
	if err := r.gc.reusableCheckpoint(ctx, cp); err != nil {
		return nil, fmt.Errorf("checkpoint of job %s: %w", jobID, err)
	}
	return cp, nil
}

// validate checks what a resumed backup would copy into its manifest.
func (cp *Checkpoint) validate() error {
	if !ValidChunkSize(cp.ChunkSize) || cp.Size < 0 {
		return fmt.Errorf("bad size %d or chunk size %d", cp.Size, cp.ChunkSize)
	}
	if err := CheckDiskSize(cp.Size, cp.ChunkSize); err != nil {
		return err
	}
	count := ChunkCount(cp.Size, cp.ChunkSize)
	for i, id := range cp.Done {
		if i < 0 || i >= count {
			return fmt.Errorf("chunk position %d of %d", i, count)
		}
		if id != "" {
			if _, err := ParseChunkID(id); err != nil {
				return err
			}
		}
	}
	for i, ps := range cp.Patches {
		if _, ok := cp.Done[i]; !ok {
			return fmt.Errorf("patches for chunk position %d, which is not done", i)
		}
		if err := validPatches(ps, min(cp.ChunkSize, cp.Size-int64(i)*cp.ChunkSize)); err != nil {
			return fmt.Errorf("chunk position %d: %w", i, err)
		}
	}
	return nil
}

// DeleteCheckpoint removes a job's checkpoint.
func (r *Repository) DeleteCheckpoint(ctx context.Context, jobID string) error {
	if !ValidID(jobID) {
		return nil
	}
	return r.store.Delete(ctx, checkpointName(jobID))
}
