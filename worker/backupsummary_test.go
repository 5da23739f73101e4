package worker

import (
	"encoding/json"
	"testing"

	"github.com/blockferry/blockferry/jobs"
	"github.com/blockferry/blockferry/sinks/repository"
)

// TestCompletedBackupSaysFallback: the completed event of a backup that a broken
// chain made a full one says so in its stats, beside the figures, flat.
func TestCompletedBackupSaysFallback(t *testing.T) {
	m := &repository.Manifest{ID: "01JD0000000000000000000000", Kind: "full", FallbackReason: jobs.FallbackBitmapMissing,
		Checkpoint: "c3", Stats: repository.BackupStats{BytesTotal: 1 << 20, ChunksTotal: 1}}
	id, stats := resultSummary(jobs.Spec{Kind: jobs.KindBackup}, &jobs.Result{Backup: m})
	data, err := json.Marshal(stats)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}
	if id != m.ID || got["kind"] != "full" || got["fallback_reason"] != jobs.FallbackBitmapMissing || got["checkpoint"] != "c3" ||
		got["bytes_total"] != float64(1<<20) || got["chunks_total"] != float64(1) {
		t.Errorf("backup %s, stats %s", id, data)
	}
	m.Kind, m.FallbackReason, m.Checkpoint = "incremental", "", ""
	_, stats = resultSummary(jobs.Spec{Kind: jobs.KindBackup}, &jobs.Result{Backup: m})
	data, _ = json.Marshal(stats)
	got = nil
	_ = json.Unmarshal(data, &got)
	if _, ok := got["fallback_reason"]; ok || got["kind"] != "incremental" {
		t.Errorf("an incremental's stats: %s", data)
	}
}
