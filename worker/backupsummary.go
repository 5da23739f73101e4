package worker

import "github.com/blockferry/blockferry/sinks/repository"

// backupSummary is the stats of a completed backup's event and status: the
// manifest's figures, with the backup's kind, so that an orchestrator that asked
// for an incremental learns from the event alone that it got a full backup, and
// why (its chain was broken), and which checkpoint the backup started.
type backupSummary struct {
	Kind           string `json:"kind"`
	FallbackReason string `json:"fallback_reason,omitempty"`
	Checkpoint     string `json:"checkpoint,omitempty"`
	repository.BackupStats
}

func summarizeBackup(m *repository.Manifest) backupSummary {
	return backupSummary{Kind: m.Kind, FallbackReason: m.FallbackReason, Checkpoint: m.Checkpoint, BackupStats: m.Stats}
}
