package worker_test

import (
	"bytes"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/blockferry/blockferry/internal/testutil"
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

// TestClusterWorkerKilledAndCancel: what the single-node fault tests show holds
// on the 3-node cluster with R3 streams and buckets too. A worker process killed
// (SIGKILL) in the middle of a backup costs that attempt only: the job is
// redelivered to the other worker, resumes from its checkpoint, completes once and
// restores bit for bit. A running job cancelled through the client ends
// cancelled, once, and leaves no backup.
func TestClusterWorkerKilledAndCancel(t *testing.T) {
	e := newClusterEnv(t)
	uri, want := randomDisk(t, filepath.Join(e.dir, "disk.raw"), 32*mib, 31)
	a := e.startWorkerProc("wa", "--ack-wait", "2s", "--jobs", "1")
	e.waitProvisioned()
	const killed, cancelled = "cluster-killed", "cluster-cancelled"
	e.submit("backup", killed, backupJob(killed, "vm-31/vda", uri, slowJob))
	checkpointed := e.waitCheckpoint(killed)
	a.signal(syscall.SIGKILL)
	if code := a.wait(10 * time.Second); code != -1 {
		t.Fatalf("worker wa exited with %d, want killed", code)
	}
	e.startWorkerProc("wb", "--ack-wait", "2s", "--jobs", "2")
	done := terminalOnly(t, e.waitEnd(killed, 90*time.Second), typeCompleted)
	if done.Data.Attempt != 2 || done.Data.Worker != "wb" {
		t.Errorf("completed %v, want attempt 2 on wb", done)
	}
	if r := statInt(t, done, "chunks_resumed"); r < int64(checkpointed) {
		t.Errorf("second attempt resumed %d chunks, the checkpoint had %d", r, checkpointed)
	}
	e.restoreAndCheck(killed+"-restore", done.Data.Backup, want)

	e.submit("backup", cancelled, backupJob(cancelled, "vm-31/vdb", uri, slowJob))
	e.waitProgress(cancelled, 30*time.Second)
	ctx, cancel := ctxTimeout(10 * time.Second)
	defer cancel()
	if err := e.client().Cancel(ctx, cancelled); err != nil {
		t.Fatal(err)
	}
	terminalOnly(t, e.waitEnd(cancelled, 30*time.Second), typeCancelled)
	if st := e.status(cancelled); st.State != worker.StateCancelled {
		t.Errorf("status of %s: %+v, want cancelled", cancelled, st)
	}
	for _, m := range e.backups() {
		if m.JobID == cancelled {
			t.Errorf("the cancelled job left backup %s", m.ID)
		}
	}
	e.waitDrained()
}

// TestWorkerWaitsForItsCluster: a worker started while its 3-node cluster has
// lost its quorum (two nodes down) gets no JetStream answers it can provision
// with; it waits for the cluster (logging why) instead of exiting, and takes jobs
// once the nodes are back.
func TestWorkerWaitsForItsCluster(t *testing.T) {
	e := newClusterEnv(t)
	down := e.cluster.Servers[1:]
	for _, s := range down {
		s.Stop()
	}
	p := e.launchWorkerProc("wa")
	p.waitLogged("provisioning: the NATS cluster cannot place the streams yet; retrying", 30*time.Second)
	for _, s := range down {
		s.Start()
	}
	p.waitStarted()
	e.waitProvisioned()
	uri, want := randomDisk(t, filepath.Join(e.dir, "disk.raw"), 8*mib, 32)
	const id = "cluster-late"
	e.submit("backup", id, backupJob(id, "vm-32/vda", uri, `{"chunk_size":1048576}`))
	done := terminalOnly(t, e.waitEnd(id, 60*time.Second), typeCompleted)
	e.restoreAndCheck(id+"-restore", done.Data.Backup, want)
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

// TestFollowersSurviveNodeLoss: `blockferry submit --wait` and `blockferry watch`
// connected to one node of the cluster go on when that node is killed, and print
// the job's terminal event within 10 s of it being stored.
func TestFollowersSurviveNodeLoss(t *testing.T) {
	e := newClusterEnv(t)
	e.startWorkerProc("wa")
	e.waitProvisioned()
	uri, _ := randomDisk(t, filepath.Join(e.dir, "disk.raw"), 24*mib, 21)
	node := e.cluster.Servers[2]
	const id = "follow-1"
	submit := startCLI(t, "submit", "backup", "--id", id, "--disk", "vm-21/vda", "--source", uri, "--rate-limit", "4MiB",
		"--chunk-size", "1048576", "--wait", "--nats-url", node.URL)
	watch := startCLI(t, "watch", id, "--nats-url", node.URL)
	e.waitProgress(id, 30*time.Second)
	node.Kill()
	t.Logf("killed %s, the node the followers are connected to", node.Name)

	done := terminalOnly(t, e.waitEnd(id, 90*time.Second), typeCompleted)
	for _, c := range []*cli{submit, watch} {
		select {
		case <-c.exited:
		case <-time.After(time.Until(done.Time.Add(10 * time.Second))):
			t.Fatalf("%s still running 10s after the job completed:\n%s", c.name, c.out.String())
		}
		if code := c.cmd.ProcessState.ExitCode(); code != 0 || !strings.Contains(c.out.String(), "completed") {
			t.Errorf("%s exited %d:\n%s", c.name, code, c.out.String())
		}
	}
}

// cli is a blockferry command run by a test.
type cli struct {
	name   string
	cmd    *exec.Cmd
	out    *bytes.Buffer
	exited chan struct{}
}

// startCLI runs the blockferry binary with args; it is killed if still running
// when the test ends.
func startCLI(t *testing.T, args ...string) *cli {
	t.Helper()
	c := &cli{name: "blockferry " + args[0], cmd: exec.Command(workerBinary(t), args...), out: &bytes.Buffer{}, exited: make(chan struct{})}
	c.cmd.Env = testutil.CleanEnv()
	c.cmd.Stdout, c.cmd.Stderr = c.out, c.out
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = c.cmd.Wait(); close(c.exited) }()
	t.Cleanup(func() {
		select {
		case <-c.exited:
		default:
			_ = c.cmd.Process.Kill()
			<-c.exited
		}
	})
	return c
}
