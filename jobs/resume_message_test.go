package jobs_test

import (
	"context"
	"errors"
	"testing"

	"github.com/blockferry/blockferry/backends/file"
	"github.com/blockferry/blockferry/jobs"
)

// TestCheckpointOfAnotherMessage: a job message that reuses the job id of an
// earlier one neither resumes the earlier message's checkpoint nor takes the
// backup it completed: it reads the whole disk into a backup of its own. The
// earlier message itself still resumes.
func TestCheckpointOfAnotherMessage(t *testing.T) {
	repo := openRepo(t, "file://"+t.TempDir()+"/repo")
	path, _ := rawDisk(t, 8*mib)
	img, err := file.OpenSource(path)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	src := &failingSource{Source: img}
	src.after.Store(2)
	first := jobs.BackupParams{JobID: "job-m", Message: "7", Resume: true, Source: "file://" + path, Disk: "vm1/vda",
		ChunkSize: chunkSize, Limits: jobs.Limits{Concurrency: 1}}
	if _, err := jobs.Backup(context.Background(), repo, src, first, nil); !errors.Is(err, errDropped) {
		t.Fatalf("first attempt: %v, want the dropped connection", err)
	}
	src.after.Store(1 << 30)

	other := first
	other.Message = "9"
	m, err := jobs.Backup(context.Background(), repo, src, other, nil)
	if err != nil {
		t.Fatal(err)
	}
	if m.Stats.ChunksResumed != 0 || m.Stats.BytesRead+m.Stats.BytesZero != 8*mib {
		t.Errorf("another message resumed the checkpoint: %+v", m.Stats)
	}
	again := other
	again.Message = "12"
	m2, err := jobs.Backup(context.Background(), repo, src, again, nil)
	if err != nil {
		t.Fatal(err)
	}
	if m2.ID == m.ID || m2.Stats.BytesRead+m2.Stats.BytesZero != 8*mib {
		t.Errorf("a third message took the completed backup %s of the second: %s, %+v", m.ID, m2.ID, m2.Stats)
	}
	redelivered, err := jobs.Backup(context.Background(), repo, src, again, nil)
	if err != nil || redelivered.ID != m2.ID {
		t.Errorf("a redelivery of the same message made %v (%v), want its backup %s", redelivered, err, m2.ID)
	}
}
