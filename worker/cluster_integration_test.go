package worker_test

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/blockferry/blockferry/worker"
)

// TestStreamLeaderKilled runs 12 backups on two worker processes against a
// 3-node cluster and kills the jobs stream's leader node while they run: every
// job has exactly one terminal event in the stream, nothing after it, its status
// says the same, and every backup restores bit for bit.
func TestStreamLeaderKilled(t *testing.T) {
	e := newClusterEnv(t)
	flags := []string{"--ack-wait", "4s", "--jobs", "3"}
	e.startWorkerProc("wa", flags...)
	e.startWorkerProc("wb", flags...)
	e.waitProvisioned()

	const n = 12
	sums := map[string]string{}
	for i := range n {
		id := fmt.Sprintf("leader-%02d", i)
		uri, sum := randomDisk(t, filepath.Join(e.dir, id+".raw"), 12*mib, uint64(100+i))
		sums[id] = sum
		e.submit("backup", id, backupJob(id, "vm-20/"+id, uri, slowJob))
	}
	e.waitEvents("leader-00", 30*time.Second, func(evs []cloudEvent) bool { return len(ofType(evs, typeStarted)) > 0 })
	leader := e.streamLeader(jobsStream)
	t.Logf("killing %s, leader of %s", leader, jobsStream)
	for _, s := range e.cluster.Servers {
		if s.Name == leader {
			s.Kill()
		}
	}

	for id, sum := range sums {
		done := terminalOnly(t, e.waitEnd(id, 180*time.Second), typeCompleted)
		if st := e.status(id); st.State != worker.StateCompleted || st.Backup != done.Data.Backup || st.Attempt != done.Data.Attempt {
			t.Errorf("status of %s: %+v; its completed event: %v backup %s", id, st, done, done.Data.Backup)
		}
		e.restoreAndCheck(id+"-restore", done.Data.Backup, sum)
	}
	e.waitDrained()
}

// streamLeader names the server leading a stream.
func (e *env) streamLeader(name string) string {
	e.t.Helper()
	ctx, cancel := ctxTimeout(10 * time.Second)
	defer cancel()
	s, err := e.js.Stream(ctx, name)
	if err != nil {
		e.t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil || info.Cluster == nil || info.Cluster.Leader == "" {
		e.t.Fatalf("stream %s: no leader (%v)", name, err)
	}
	return info.Cluster.Leader
}
