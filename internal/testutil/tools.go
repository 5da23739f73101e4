// Package testutil starts the real programs integration tests talk to (qemu-nbd,
// nbdkit, versitygw, nats-server) on loopback, and stops them when a test ends.
package testutil

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// InCI reports whether the tests run in CI, where a missing tool is a failure.
func InCI() bool { return os.Getenv("CI") != "" }

// CleanEnv is this process's environment without blockferry settings
// (BLOCKFERRY_*), for the blockferry processes a test starts.
func CleanEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "BLOCKFERRY_") {
			out = append(out, kv)
		}
	}
	return out
}

// RequireTool returns the path of a program the test needs. It looks on PATH and in
// the repository's .cache/bin (where `make setup` builds versitygw and nats-server).
// When the program is missing the test is skipped, except in CI, where it fails.
func RequireTool(t testing.TB, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	p := filepath.Join(RepoRoot(), ".cache", "bin", name)
	if st, err := os.Stat(p); err == nil && st.Mode()&0o111 != 0 {
		return p
	}
	if InCI() {
		t.Fatalf("%s is required in CI but was not found (run make setup)", name)
	}
	t.Skipf("%s not installed; run make setup", name)
	return ""
}

// RepoRoot is the directory holding go.mod.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}
