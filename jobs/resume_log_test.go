package jobs_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/blockferry/blockferry/backends/file"
	"github.com/blockferry/blockferry/jobs"
	"github.com/blockferry/blockferry/sinks"
	"github.com/blockferry/blockferry/sinks/repository"
)

// checkpointRefusingStore fails every checkpoint write once allowed of them went
// through.
type checkpointRefusingStore struct {
	sinks.Store
	allowed atomic.Int64
}

var errCheckpointRefused = errors.New("checkpoint write refused")

func (s *checkpointRefusingStore) Put(ctx context.Context, name string, data []byte) error {
	if strings.HasPrefix(name, "checkpoints/") && s.allowed.Add(-1) < 0 {
		return errCheckpointRefused
	}
	return s.Store.Put(ctx, name, data)
}

// TestBackupLogsResumeAndLostCheckpoints: the logger a backup is given hears that
// it resumed an earlier attempt and that checkpoints could not be written, which
// the backup itself survives.
func TestBackupLogsResumeAndLostCheckpoints(t *testing.T) {
	ctx := context.Background()
	fileStore, err := sinks.OpenStore(ctx, "file://"+filepath.Join(t.TempDir(), "repo"))
	if err != nil {
		t.Fatal(err)
	}
	store := &checkpointRefusingStore{Store: fileStore}
	store.allowed.Store(1 << 30)
	repo, err := repository.OpenOrInit(ctx, store, repository.InitOptions{ChunkSize: chunkSize, Compression: jobs.DefaultCompression})
	if err != nil {
		t.Fatal(err)
	}
	path, _ := rawDisk(t, 16*mib)
	src := droppingSource(t, path, 3)
	params := jobs.BackupParams{JobID: "job-l", Resume: true, Source: "file://" + path, Disk: "vm1/vda", ChunkSize: chunkSize, Limits: jobs.Limits{Concurrency: 1}}
	if _, err := jobs.Backup(ctx, repo, src, params, nil); !errors.Is(err, errDropped) {
		t.Fatalf("first attempt: %v, want the dropped connection", err)
	}
	cp, err := repo.LoadCheckpoint(ctx, "job-l")
	if err != nil || cp == nil {
		t.Fatalf("no checkpoint after the first attempt: %v", err)
	}

	// The second attempt records its start, then no checkpoint write succeeds.
	core, logs := observer.New(zapcore.InfoLevel)
	params.Log = zap.New(core)
	src.after.Store(1 << 30)
	store.allowed.Store(1)
	m, err := jobs.Backup(ctx, repo, src, params, nil)
	if err != nil {
		t.Fatalf("second attempt: %v", err)
	}
	resumed := logs.FilterMessageSnippet("resuming").FilterField(zap.String("backup", cp.BackupID)).AllUntimed()
	if len(resumed) != 1 || m.ID != cp.BackupID {
		t.Errorf("resumed backup %s (checkpoint %s); resume log entries %+v", m.ID, cp.BackupID, resumed)
	}
	lost := logs.FilterLevelExact(zapcore.WarnLevel).FilterMessageSnippet("checkpoint not written").AllUntimed()
	if len(lost) == 0 {
		t.Errorf("no warning for the refused checkpoint writes; logged %+v", logs.AllUntimed())
	}
	for _, e := range lost {
		if e.ContextMap()["job"] != "job-l" || !strings.Contains(e.ContextMap()["error"].(string), errCheckpointRefused.Error()) {
			t.Errorf("warning %+v does not name the job and the error", e.ContextMap())
		}
	}
}

// droppingSource is the raw image at path, failing every read after the first
// `after`.
func droppingSource(t *testing.T, path string, after int64) *failingSource {
	t.Helper()
	img, err := file.OpenSource(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { img.Close() })
	src := &failingSource{Source: img}
	src.after.Store(after)
	return src
}
