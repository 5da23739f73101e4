package worker_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// TestPruneJob: `blockferry submit prune --disk D --keep-last 1 --wait` forgets
// the disk's older backups on a worker and collects garbage; its completed event
// names the backups forgotten and what the collection condemned, and the
// repository keeps only the newest backup of the disk and every backup of others.
func TestPruneJob(t *testing.T) {
	e := newEmbeddedEnv(t)
	e.startWorker("w-prune")
	e.waitProvisioned()
	var ids []string
	for i, disk := range []string{"vm1/vda", "vm1/vda", "vm1/vda", "vm2/vdb"} {
		data := make([]byte, 2*mib)
		rand.NewChaCha8([32]byte{byte(i + 1)}).Read(data)
		src := filepath.Join(e.dir, fmt.Sprintf("disk%d.raw", i))
		if err := os.WriteFile(src, data, 0o600); err != nil {
			t.Fatal(err)
		}
		id := fmt.Sprintf("backup-%d", i)
		e.submit("backup", id, backupJob(id, disk, "file://"+src, `{"chunk_size":1048576}`))
		done := terminalOnly(t, e.waitEnd(id, time.Minute), typeCompleted)
		ids = append(ids, done.Data.Backup)
	}

	cmd := exec.Command(workerBinary(t), "submit", "prune", "--json", "--wait", "--id", "prune-vm1",
		"--nats-url", e.url, "--repository", e.repo, "--disk", "vm1/vda", "--keep-last", "1")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("submit prune --wait: %v\n%s", err, stderr.String())
	}
	var last struct {
		Type string `json:"type"`
		Data struct {
			Kind  string `json:"kind"`
			Disk  string `json:"disk"`
			Stats struct {
				Disk            string   `json:"disk"`
				Forgotten       []string `json:"forgotten"`
				Kept            int      `json:"kept"`
				ChunksCondemned int      `json:"chunks_condemned"`
				ChunksTotal     int      `json:"chunks_total"`
			} `json:"stats"`
		} `json:"data"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &last); err != nil {
		t.Fatalf("submit prune --json: %v: %s", err, stdout.String())
	}
	st := last.Data.Stats
	slices.Sort(st.Forgotten)
	if last.Type != typeCompleted || last.Data.Kind != "prune" || last.Data.Disk != "vm1/vda" ||
		!slices.Equal(st.Forgotten, []string{ids[0], ids[1]}) || st.Kept != 1 {
		t.Fatalf("prune's last event: %s", stdout.String())
	}
	// Every backup had two chunks of its own: those of the two forgotten ones
	// are condemned, for a prune after the grace period to delete.
	if st.ChunksCondemned != 4 || st.ChunksTotal != 8 {
		t.Errorf("prune condemned %d of %d chunks, want 4 of 8", st.ChunksCondemned, st.ChunksTotal)
	}
	var left []string
	for _, m := range e.backups() {
		left = append(left, m.ID)
	}
	slices.Sort(left)
	if want := []string{ids[2], ids[3]}; !slices.Equal(left, want) {
		t.Errorf("backups after the prune job: %v, want %v", left, want)
	}
	evs := e.waitEnd("prune-vm1", 10*time.Second)
	if evs[0].Type != typeStarted {
		t.Errorf("prune job's events: %v", evs)
	}

	// A prune job must say what it prunes: retention without a disk is refused.
	e.submit("prune", "prune-bad", `{"spec_version":1,"id":"prune-bad","kind":"prune","retention":{"keep_last":1}}`)
	if bad := terminalOnly(t, e.waitEnd("prune-bad", 30*time.Second), typeFailed); bad.Data.Error.Code != "invalid_job" {
		t.Errorf("prune with retention and no disk: %v", bad)
	}
}
