package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/blockferry/blockferry/internal/testutil"
)

// TestEmbeddedNATSRequiresCredentials: a worker with an embedded server generates
// a token in its data directory, refuses anonymous clients, and the commands next
// to it find the token by themselves.
func TestEmbeddedNATSRequiresCredentials(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a worker")
	}
	dataDir := t.TempDir()
	url := fmt.Sprintf("nats://127.0.0.1:%d", testutil.FreePort(t))
	worker := exec.Command(binary, "worker", "--listen", strings.TrimPrefix(url, "nats://"), "--log-level", "warn")
	worker.Env = append(testutil.CleanEnv(), "BLOCKFERRY_DATA_DIR="+dataDir)
	var log strings.Builder
	worker.Stdout, worker.Stderr = &log, &log
	if err := worker.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = worker.Process.Kill(); _ = worker.Wait() })
	tokenFile := filepath.Join(dataDir, "nats.token")
	deadline := time.Now().Add(30 * time.Second)
	for {
		r := cli(t, []string{"BLOCKFERRY_DATA_DIR=" + dataDir}, "cancel", "--nats-url", url, "some-job")
		if r.code == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cancel with the generated token: %+v\nworker log:\n%s", r, log.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	st, err := os.Stat(tokenFile)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("token file: %v, %v", st, err)
	}
	if nc, err := nats.Connect(url, nats.MaxReconnects(0)); err == nil {
		nc.Close()
		t.Fatal("an anonymous client was let in")
	} else if !strings.Contains(strings.ToLower(err.Error()), "authorization") {
		t.Errorf("anonymous client: %v, want an authorization error", err)
	}
	other := cli(t, []string{"BLOCKFERRY_DATA_DIR=" + t.TempDir()}, "status", "--nats-url", url, "some-job")
	if other.code == 0 {
		t.Error("a client without the token was let in")
	}
	token, _ := os.ReadFile(tokenFile)
	if strings.Contains(log.String(), strings.TrimSpace(string(token))) {
		t.Error("the worker logged its token")
	}
}

func TestSecretsStaySecret(t *testing.T) {
	r := cli(t, nil, "status", "--nats-url", fmt.Sprintf("nats://alice:sekret@127.0.0.1:%d", testutil.FreePort(t)), "job")
	if r.code == 0 || strings.Contains(r.stderr+r.stdout, "sekret") || !strings.Contains(r.stderr, "xxxxx") {
		t.Errorf("a NATS password shows: %+v", r)
	}
	keyFile := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(keyFile, []byte("a-long-enough-key\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	repo := "file://" + t.TempDir()
	mustFail(t, cli(t, nil, "init", "--repository", repo, "--key-file", keyFile), "group or others")
	if err := os.Chmod(keyFile, 0o600); err != nil {
		t.Fatal(err)
	}
	if r := cli(t, nil, "init", "--repository", repo, "--key-file", keyFile); r.code != 0 {
		t.Errorf("init with a private key file: %+v", r)
	}
}

func TestPrintable(t *testing.T) {
	if got := printable("job x: \x1b[2Jgone\a ſ é\u202e"); got != `job x: \x1b[2Jgone\a ſ é\u202e` {
		t.Errorf("printable = %q", got)
	}
}

// TestShippedWorkerConfig: deploy/systemd/worker.yaml, which the unit uses, is a
// configuration the worker accepts, with its repository table and allow-lists
// (in the allow: section).
func TestShippedWorkerConfig(t *testing.T) {
	file := filepath.Join(testutil.RepoRoot(), "deploy", "systemd", "worker.yaml")
	root := newRootCommand()
	cmd, _, err := root.Find([]string{"worker"})
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("BLOCKFERRY_DATA_DIR", "") // the file's value, not this shell's
	if err := applyConfig(cmd, file); err != nil {
		t.Fatal(err)
	}
	get := func(name string) string { return cmd.Flags().Lookup(name).Value.String() }
	if get("data-dir") != "/var/lib/blockferry" || get("allow-source") != "[nbd+unix:///*?socket=/run/blockferry/*.sock]" ||
		get("allow-target") != "[file:///var/lib/blockferry/restore/*,nbd+unix:///*?socket=/run/blockferry/*.sock]" {
		t.Errorf("data-dir %s, allow-source %s, allow-target %s", get("data-dir"), get("allow-source"), get("allow-target"))
	}
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), "\nallow:\n  sources:") {
		t.Error("the shipped worker.yaml does not show the allow: section")
	}
	var pf policyFlags
	pf.defaultName = "default"
	pf.sources, _ = cmd.Flags().GetStringSlice("allow-source")
	pf.targets, _ = cmd.Flags().GetStringSlice("allow-target")
	if _, err := pf.policy(file, "file:///unused", nil); err != nil {
		t.Fatal(err)
	}
}
