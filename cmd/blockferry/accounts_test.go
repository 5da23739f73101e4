package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/blockferry/blockferry/internal/testutil"
	"github.com/blockferry/blockferry/worker"
)

// documentedAccounts is the nats-server configuration docs/JOBS.md shows under
// "NATS accounts for a shared queue": the test runs exactly what the doc says.
func documentedAccounts(t *testing.T) string {
	t.Helper()
	doc, err := os.ReadFile(filepath.Join(testutil.RepoRoot(), "docs", "JOBS.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(doc), "**NATS accounts for a shared queue.**")
	if !ok {
		t.Fatal(`docs/JOBS.md has no "NATS accounts for a shared queue" paragraph`)
	}
	_, rest, ok = strings.Cut(rest, "\n```")
	if !ok {
		t.Fatal("no code block follows the NATS accounts paragraph")
	}
	_, rest, _ = strings.Cut(rest, "\n") // the fence's info string
	config, _, ok := strings.Cut(rest, "\n```")
	if !ok {
		t.Fatal("the NATS accounts code block is not closed")
	}
	// The server's own store is the test's (StartNATSWithConfig's flags give it);
	// everything else, accounts and permissions, is the doc's.
	const store = "jetstream: {store_dir: /var/lib/nats}\n"
	if !strings.HasPrefix(config, store) {
		t.Fatalf("the documented NATS config does not start with %q", store)
	}
	return strings.TrimPrefix(config, store) + "\n"
}

// natsUser is one of the documented users, with the password the test gives it.
type natsUser struct{ name, password string }

func (u natsUser) env() []string {
	return []string{"BLOCKFERRY_NATS_USER=" + u.name, "BLOCKFERRY_NATS_PASSWORD=" + u.password}
}

// connect connects as u with nats.go; errs receives the server's asynchronous
// errors (permission violations of publishes).
func (u natsUser) connect(t *testing.T, url string) (*nats.Conn, chan error) {
	t.Helper()
	errs := make(chan error, 16)
	nc, err := nats.Connect(url, nats.UserInfo(u.name, u.password), nats.NoReconnect(),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			select {
			case errs <- err:
			default:
			}
		}))
	if err != nil {
		t.Fatalf("connecting as %s: %v", u.name, err)
	}
	t.Cleanup(nc.Close)
	return nc, errs
}

// mustBeDenied publishes on subject and expects the server to refuse it.
func mustBeDenied(t *testing.T, nc *nats.Conn, errs chan error, subject string) {
	t.Helper()
	if err := nc.Publish(subject, []byte(`{}`)); err != nil {
		t.Fatalf("publish %s: %v", subject, err)
	}
	_ = nc.Flush()
	want := fmt.Sprintf("permissions violation for publish to %q", subject)
	timeout := time.After(5 * time.Second)
	for {
		select {
		case err := <-errs:
			if strings.Contains(strings.ToLower(err.Error()), strings.ToLower(want)) {
				return
			}
		case <-timeout:
			t.Fatalf("%s may publish on %s", nc.Opts.User, subject)
		}
	}
}

// TestDocumentedNATSAccounts runs the worker and the CLI against nats-server with
// the documented accounts: the orchestrator submits a job and reads its events and
// status, the monitor only reads, neither can forge an advisory, take jobs from the
// workers' consumer or write job status, and anonymous clients are refused.
func TestDocumentedNATSAccounts(t *testing.T) {
	if testing.Short() {
		t.Skip("starts nats-server and a worker")
	}
	dir := t.TempDir()
	configFile := filepath.Join(dir, "nats.conf")
	if err := os.WriteFile(configFile, []byte(documentedAccounts(t)), 0o600); err != nil {
		t.Fatal(err)
	}
	orch, wk, mon := natsUser{"orchestrator", "orch-pw"}, natsUser{"worker", "worker-pw"}, natsUser{"monitor", "mon-pw"}
	server := testutil.StartNATSWithConfig(t, configFile,
		[]string{"ORCH_PASSWORD=" + orch.password, "WORKER_PASSWORD=" + wk.password, "MONITOR_PASSWORD=" + mon.password},
		nats.UserInfo(wk.name, wk.password))
	url := server.URL

	disk := filepath.Join(dir, "disk.raw")
	writeRandomDisk(t, disk, 3<<20)
	w := exec.Command(binary, "worker", "--nats-url", url, "--data-dir", filepath.Join(dir, "data"),
		"--repository", "file://"+filepath.Join(dir, "repo"), "--allow-source", "file://"+dir+"/*", "--log-level", "warn")
	w.Env = append(testutil.CleanEnv(), wk.env()...)
	var log strings.Builder
	w.Stdout, w.Stderr = &log, &log
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Process.Kill(); _ = w.Wait() })

	submit := []string{"submit", "backup", "--nats-url", url, "--id", "job-1", "--source", "file://" + disk, "--disk", "vm1/vda"}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		r := cli(t, testutil.CleanEnv(), submit...) // no credentials: refused
		if r.code == 0 {
			t.Fatal("an anonymous client submitted a job")
		}
		if r = cli(t, append(testutil.CleanEnv(), orch.env()...), submit...); r.code == 0 {
			break // the worker made the streams, the orchestrator's job is in
		}
		if time.Now().After(deadline) {
			t.Fatalf("orchestrator submit: %+v\nworker log:\n%s\nserver log:\n%s", r, log.String(), server.Output())
		}
	}
	for _, u := range []natsUser{orch, mon} {
		if r := cli(t, append(testutil.CleanEnv(), u.env()...), "watch", "--json", "--nats-url", url, "job-1"); r.code != 0 || !strings.Contains(r.stdout, "io.blockferry.job.completed") {
			t.Fatalf("%s: watch: %+v\nserver log:\n%s", u.name, r, server.Output())
		}
		r := cli(t, append(testutil.CleanEnv(), u.env()...), "status", "--json", "--nats-url", url, "job-1")
		var st struct {
			State string `json:"state"`
		}
		if r.code != 0 || json.Unmarshal([]byte(r.stdout), &st) != nil || st.State != "completed" {
			t.Errorf("%s: status: %+v", u.name, r)
		}
	}
	if r := cli(t, append(testutil.CleanEnv(), orch.env()...), "cancel", "--nats-url", url, "job-2"); r.code != 0 {
		t.Errorf("orchestrator: cancel: %+v", r)
	}
	monEnv := append(testutil.CleanEnv(), mon.env()...)
	for _, args := range [][]string{
		{"submit", "backup", "--nats-url", url, "--source", "file://" + disk, "--disk", "vm1/vdb"},
		{"cancel", "--nats-url", url, "job-1"},
	} {
		if r := cli(t, monEnv, args...); r.code == 0 || !strings.Contains(strings.ToLower(r.stderr), "permissions violation") {
			t.Errorf("monitor: %s: %+v, want a permissions violation", args[0], r)
		}
	}

	topo := worker.DefaultTopology()
	forbidden := []string{
		"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES." + topo.JobsStream + "." + topo.Consumer, // a forged "job exhausted"
		"$JS.API.CONSUMER.MSG.NEXT." + topo.JobsStream + "." + topo.Consumer,                  // taking the workers' jobs
		"$JS.API.CONSUMER.CREATE." + topo.JobsStream + ".mine",                                // a consumer of its own on the jobs
		"$JS.API.CONSUMER.DURABLE.CREATE." + topo.JobsStream + ".mine",
		"$KV." + topo.StatusBucket + ".job-1", // writing job status
		"$JS.API.STREAM.PURGE." + topo.EventsStream,
		topo.EventSubject("job-1"), // forging events
	}
	for _, u := range []natsUser{orch, mon} {
		nc, errs := u.connect(t, url)
		for _, subject := range forbidden {
			mustBeDenied(t, nc, errs, subject)
		}
	}
	nc, errs := mon.connect(t, url)
	mustBeDenied(t, nc, errs, topo.JobSubject("backup"))
	if nc, err := nats.Connect(url, nats.NoReconnect()); err == nil {
		nc.Close()
		t.Error("an anonymous client was let in")
	}
}
