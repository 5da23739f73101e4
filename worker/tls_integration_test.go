package worker_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/blockferry/blockferry/internal/testutil"
	"github.com/blockferry/blockferry/jobs"
)

// TestNBDTLS: a worker whose worker.yaml has nbd_tls with a certificate
// directory backs up an export that requires TLS with client certificates
// (qemu-nbd, certificates made here) through nbds+unix://, and the backup
// restores bit for bit. A worker without the setting fails the same job at
// once: access_denied, not retried, saying what it lacked.
func TestNBDTLS(t *testing.T) {
	e := newProcessEnv(t)
	certs := testutil.X509CertificateDirs(t)
	_, sum := randomDisk(t, filepath.Join(e.dir, "disk.raw"), 8<<20, 11)
	plain, _ := testutil.ServeQemuNBD(t, filepath.Join(e.dir, "disk.raw"), "", "--format=raw",
		"--object", "tls-creds-x509,id=tls0,endpoint=server,dir="+certs.Server, "--tls-creds=tls0")
	source := "nbds+unix" + strings.TrimPrefix(plain, "nbd+unix")
	allowTLS := "nbds+unix:///*?socket=" + filepath.Dir(e.dir) + "/**"

	config := filepath.Join(e.dir, "worker.yaml")
	if err := os.WriteFile(config, fmt.Appendf(nil, "nbd_tls: {certificates: %q, verify_peer: true}\n", certs.Client), 0o600); err != nil {
		t.Fatal(err)
	}
	w := e.startWorkerProc("tls", "--config", config, "--allow-source", allowTLS)
	e.waitProvisioned()
	e.submit("backup", "tls-backup", backupJob("tls-backup", "vm1/vda", source, ""))
	done := terminalOnly(t, e.waitEnd("tls-backup", 60*time.Second), typeCompleted)
	e.restoreAndCheck("tls-restore", done.Data.Backup, sum)
	w.signal(syscall.SIGTERM)
	w.wait(60 * time.Second)

	e.startWorkerProc("no-tls", "--allow-source", allowTLS)
	e.submit("backup", "no-tls-backup", backupJob("no-tls-backup", "vm1/vda", source, ""))
	ev := terminalOnly(t, e.waitEnd("no-tls-backup", 60*time.Second), typeFailed)
	if ev.Data.Error == nil || ev.Data.Error.Code != jobs.CodeAccessDenied || ev.Data.Error.Retryable || ev.Data.Attempt != 1 {
		t.Fatalf("without certificates: %v, want failed/access_denied at attempt 1", ev)
	}
	if msg := ev.Data.Error.Message; !strings.Contains(msg, "TLS") || !strings.Contains(msg, "no certificate directory or PSK file") {
		t.Errorf("without certificates the message does not say what is missing: %s", msg)
	}
}
