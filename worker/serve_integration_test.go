package worker_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/blockferry/blockferry/internal/testutil"
)

// cli runs a blockferry client command against the env's NATS server and
// returns its standard output.
func (e *env) cli(args ...string) string {
	e.t.Helper()
	cmd := exec.Command(workerBinary(e.t), append(args, "--nats-url", e.url)...)
	cmd.Env = append(testutil.CleanEnv(), "HOME="+e.dir)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		e.t.Fatalf("blockferry %v: %v\n%s", args, err, stderr.String())
	}
	return string(out)
}

func serveJob(id, backup, listen, options string) string {
	s := fmt.Sprintf(`{"spec_version":1,"id":%q,"kind":"serve","backup":%q,"listen":%q`, id, backup, listen)
	if options != "" {
		s += `,"options":` + options
	}
	return s + "}"
}

// TestServeJob serves a backup as a job: `submit serve --wait` prints the URI
// once the export is up, nbdcopy of the export equals the disk, `cancel` stops
// it and its socket goes away; a lifetime ends another by itself; listen
// addresses off the worker's list and lifetimes beyond its maximum are refused.
func TestServeJob(t *testing.T) {
	e := newProcessEnv(t)
	serveDir := filepath.Join(e.dir, "serve")
	if err := os.MkdirAll(serveDir, 0o755); err != nil {
		t.Fatal(err)
	}
	e.startWorkerProc("ws", "--jobs", "2", "--allow-serve-listen", "unix://"+serveDir+"/*.sock", "--max-serve-lifetime", "1m")
	uri, want := randomDisk(t, filepath.Join(e.dir, "disk.raw"), 24*mib, 11)
	e.submit("backup", "serve-src", backupJob("serve-src", "vm-9/vda", uri, ""))
	backup := terminalOnly(t, e.waitEnd("serve-src", 60*time.Second), typeCompleted).Data.Backup

	sock := filepath.Join(serveDir, "vm9.sock")
	exportURI := strings.TrimSpace(e.cli("submit", "serve", "--id", "serve-1", "--backup", backup, "--listen", "unix://"+sock, "--wait"))
	if exportURI != "nbd+unix:///?socket="+sock {
		t.Fatalf("submit serve --wait printed %q", exportURI)
	}
	copied := filepath.Join(e.dir, "copy.raw")
	if out, err := exec.Command("nbdcopy", exportURI, copied).CombinedOutput(); err != nil {
		t.Fatalf("nbdcopy: %v\n%s", err, out)
	}
	if got := testutil.SHA256File(t, copied); got != want {
		t.Errorf("copy of the export: sha256 %s, want %s", got, want)
	}
	evs, err := e.readEvents("serve-1")
	if err != nil {
		t.Fatal(err)
	}
	if p := ofType(evs, typeProgress); len(p) == 0 || p[0].Data.Export != exportURI {
		t.Errorf("progress events do not carry the export's URI: %v", evs)
	}
	e.cli("cancel", "serve-1")
	terminalOnly(t, e.waitEnd("serve-1", 30*time.Second), typeCancelled)
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Errorf("the socket of a cancelled export is still there: %v", err)
	}

	sock2 := filepath.Join(serveDir, "short.sock")
	e.submit("serve", "serve-2", serveJob("serve-2", backup, "unix://"+sock2, `{"lifetime":"2s"}`))
	done := terminalOnly(t, e.waitEnd("serve-2", 30*time.Second), typeCompleted)
	if d, _ := done.Data.Stats["duration_seconds"].(float64); done.Data.Stats["uri"] != "nbd+unix:///?socket="+sock2 || d < 2 {
		t.Errorf("completed serve: stats %v", done.Data.Stats)
	}
	if _, err := os.Lstat(sock2); !os.IsNotExist(err) {
		t.Errorf("the socket of an export whose lifetime ended is still there: %v", err)
	}

	denied := map[string]string{
		"serve-elsewhere": serveJob("serve-elsewhere", backup, "unix://"+filepath.Join(e.dir, "x.sock"), ""),
		"serve-escape":    serveJob("serve-escape", backup, "unix://"+serveDir+"/../x.sock", ""),
		"serve-tcp":       serveJob("serve-tcp", backup, "tcp://127.0.0.1:0", ""),
		"serve-forever":   serveJob("serve-forever", backup, "unix://"+serveDir+"/long.sock", `{"lifetime":"2h"}`),
	}
	for id, body := range denied {
		e.submit("serve", id, body)
	}
	for id := range denied {
		e.forbidden(id)
	}
	if _, err := os.Lstat(filepath.Join(e.dir, "x.sock")); !os.IsNotExist(err) {
		t.Errorf("a denied serve job listened: %v", err)
	}
}
