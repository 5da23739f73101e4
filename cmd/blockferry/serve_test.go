package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/blockferry/blockferry/internal/testutil"
	"github.com/blockferry/blockferry/sinks"
	"github.com/blockferry/blockferry/sinks/repository"
)

// served is a running `blockferry serve`.
type served struct {
	uri    string
	stderr logFile
	stop   func() // SIGTERM, then checks a clean exit; also runs when the test ends
}

// logFile is a child's output, in a file: the child writes it while the test
// may read it.
type logFile string

func newLogFile(t *testing.T) (logFile, *os.File) {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "output.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return logFile(f.Name()), f
}

func (l logFile) String() string {
	b, _ := os.ReadFile(string(l))
	return string(b)
}

// serveBackup runs `blockferry serve` on a Unix socket (or on the --listen
// address that extra starts with) until the test ends, and checks then that
// SIGTERM stops it cleanly.
func serveBackup(t *testing.T, env []string, repo, backup string, extra ...string) served {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "bf.sock")
	listen := "unix://" + sock
	if len(extra) >= 2 && extra[0] == "--listen" {
		listen, sock, extra = extra[1], "", extra[2:]
	}
	args := []string{"serve", "--json", "--repository", repo, "--backup", backup, "--listen", listen}
	cmd := exec.Command(binary, append(args, extra...)...)
	cmd.Env = append(os.Environ(), env...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var s served
	s.stderr, cmd.Stderr = newLogFile(t)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	var once sync.Once
	s.stop = func() {
		once.Do(func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case err := <-exited:
				if err != nil {
					t.Errorf("serve ended with %v: %s", err, s.stderr)
				}
			case <-time.After(10 * time.Second):
				_ = cmd.Process.Kill()
				t.Errorf("serve did not stop on SIGTERM")
			}
		})
	}
	t.Cleanup(s.stop)
	var out struct {
		URI    string `json:"uri"`
		Backup string `json:"backup"`
	}
	// The URI is printed once the socket listens; then stdout is drained so the
	// process never blocks on it.
	if err := json.NewDecoder(stdout).Decode(&out); err != nil || out.Backup != backup || out.URI == "" || !strings.Contains(out.URI, sock) {
		t.Fatalf("serve printed %+v (%v); stderr %s", out, err, s.stderr)
	}
	go func() {
		_, _ = io.Copy(io.Discard, stdout)
		exited <- cmd.Wait()
	}()
	s.uri = out.URI
	return s
}

// runTool runs a program the test needs and returns its output, failing the test
// when it fails.
func runTool(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(testutil.RequireTool(t, name), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// zeroMap is what nbdinfo --map says reads as zeroes: "offset length" pairs.
func zeroMap(t *testing.T, uri string) []string {
	t.Helper()
	var zero []string
	for _, line := range strings.Split(strings.TrimSpace(runTool(t, "nbdinfo", "--map", uri)), "\n") {
		f := strings.Fields(line)
		if len(f) == 4 && f[3] == "hole,zero" {
			zero = append(zero, f[0]+" "+f[1])
		}
	}
	return zero
}

// checkExport checks a served backup against the raw disk it was taken of:
// nbdcopy of the export equals it, nbdinfo --map reports wantZero, and qemu-img
// compare finds the export equal to a restore of the same backup.
func checkExport(t *testing.T, env []string, repo, backup, raw string, wantZero []string) {
	t.Helper()
	s := serveBackup(t, env, repo, backup)
	dir := t.TempDir()
	copied := filepath.Join(dir, "copy.raw")
	runTool(t, "nbdcopy", s.uri, copied)
	if testutil.SHA256File(t, copied) != testutil.SHA256File(t, raw) {
		t.Errorf("nbdcopy of the export of %s differs from the disk it was taken of", backup)
	}
	if got := zeroMap(t, s.uri); strings.Join(got, ",") != strings.Join(wantZero, ",") {
		t.Errorf("nbdinfo --map zero ranges %v, want %v", got, wantZero)
	}
	restored := filepath.Join(dir, "restored.raw")
	if r := cli(t, env, "restore", "--repository", repo, "--backup", backup, "--target", "file://"+restored); r.code != 0 {
		t.Fatalf("restore: %s", r.stderr)
	}
	runTool(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", s.uri, restored)
}

// backupTwice makes a full backup of a 32 MiB disk and an incremental one whose
// small changes the repository stores as patches; it returns the raw images of
// the disk at both points.
func backupTwice(t *testing.T, env []string, repo string) (full, incr, raw0, raw1 string) {
	t.Helper()
	dir := t.TempDir()
	image := filepath.Join(dir, "d.qcow2")
	testutil.MakeQcow2(t, image, 32<<20)
	// Positions of 4 MiB: 0 and 2 hold data, 1 and 3-7 are never written.
	testutil.QemuIO(t, image, "write -P 7 0 3M", "write -P 9 8M 4M")
	testutil.AddBitmap(t, image, "b1")
	raw0, raw1 = filepath.Join(dir, "0.raw"), filepath.Join(dir, "1.raw")
	testutil.ConvertToRaw(t, image, raw0)
	full = backupOf(t, env, repo, image, "")
	// A few blocks change: in data positions, in a zero one, and one zeroed.
	testutil.QemuIO(t, image, "write -P 0x33 8M 4k", "write -P 0x44 20M 64k", "write -z 64k 64k")
	testutil.ConvertToRaw(t, image, raw1)
	incr = backupOf(t, env, repo, image, full)
	return full, incr, raw0, raw1
}

func backupOf(t *testing.T, env []string, repo, image, parent string) string {
	t.Helper()
	uri, stop := testutil.ServeQemuNBD(t, image, "b1")
	defer stop()
	args := []string{"backup", "--json", "--source", uri, "--disk", "vm1/vda", "--repository", repo}
	if parent != "" {
		args = append(args, "--bitmap", "b1", "--parent", parent)
	}
	r := cli(t, env, args...)
	var b struct {
		Backup string `json:"backup"`
	}
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &b) != nil || b.Backup == "" {
		t.Fatalf("backup: %s %s", r.stdout, r.stderr)
	}
	return b.Backup
}

func manifestOf(t *testing.T, repo, backup string) (*repository.Repository, *repository.Manifest) {
	t.Helper()
	ctx := context.Background()
	store, err := sinks.OpenStore(ctx, repo)
	if err != nil {
		t.Fatal(err)
	}
	r, err := repository.Open(ctx, store, nil)
	if err != nil {
		t.Fatal(err)
	}
	m, err := r.Manifest(ctx, backup)
	if err != nil {
		t.Fatal(err)
	}
	return r, m
}

var (
	fullZeroes = []string{"4194304 4194304", "12582912 20971520"}
	incrZeroes = []string{"4194304 4194304", "12582912 8388608", "25165824 8388608"}
)

func TestServeFullAndIncrementalFromFile(t *testing.T) {
	repo := "file://" + filepath.Join(t.TempDir(), "repo")
	full, incr, raw0, raw1 := backupTwice(t, nil, repo)
	if _, m := manifestOf(t, repo, incr); len(m.Patches) == 0 {
		t.Fatalf("the incremental backup has no patches: the test would not cover them")
	}
	t.Run("full", func(t *testing.T) { checkExport(t, nil, repo, full, raw0, fullZeroes) })
	t.Run("incremental", func(t *testing.T) { checkExport(t, nil, repo, incr, raw1, incrZeroes) })
}

func TestServeFullAndIncrementalFromS3(t *testing.T) {
	endpoint, ak, sk := testutil.StartS3(t)
	testutil.CreateBucket(t, endpoint, ak, sk, "bkt")
	env := []string{"AWS_ACCESS_KEY_ID=" + ak, "AWS_SECRET_ACCESS_KEY=" + sk, "AWS_REGION=us-east-1"}
	repo := "s3://bkt/bf?endpoint=" + endpoint + "&region=us-east-1"
	full, incr, raw0, raw1 := backupTwice(t, env, repo)
	t.Run("full", func(t *testing.T) { checkExport(t, env, repo, full, raw0, fullZeroes) })
	t.Run("incremental", func(t *testing.T) { checkExport(t, env, repo, incr, raw1, incrZeroes) })
}

// TestServeOverlayAndCorruptChunk: a qcow2 overlay on the export takes writes and
// the backup stays as it was; then a corrupt chunk is an I/O error for the reads
// that touch its position only, and a log line.
func TestServeOverlayAndCorruptChunk(t *testing.T) {
	dir := t.TempDir()
	repo := "file://" + filepath.Join(dir, "repo")
	full, _, raw0, _ := backupTwice(t, nil, repo)

	s := serveBackup(t, nil, repo, full)
	overlay := filepath.Join(dir, "overlay.qcow2")
	runTool(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", s.uri, "-F", "raw", overlay)
	out := runTool(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x77 1M 64k", "-c", "read -P 0x77 1M 64k",
		"-c", "read -P 7 0 64k", "-c", "read -P 0 4M 64k", overlay)
	if strings.Contains(out, "error") || strings.Contains(out, "Pattern verification failed") {
		t.Fatalf("qemu-io on the overlay: %s", out)
	}
	copied := filepath.Join(dir, "after-overlay.raw")
	runTool(t, "nbdcopy", s.uri, copied)
	if testutil.SHA256File(t, copied) != testutil.SHA256File(t, raw0) {
		t.Error("the export changed after writes to its overlay")
	}
	if r := cli(t, nil, "verify", "--repository", repo, "--backup", full); r.code != 0 {
		t.Fatalf("verify after writes to the overlay: %s %s", r.stdout, r.stderr)
	}

	// Corrupt the chunk of position 2 (disk bytes 8-12 MiB).
	_, m := manifestOf(t, repo, full)
	id := m.Chunks[2]
	chunkFile := filepath.Join(dir, "repo", "chunks", id[:2], id)
	b, err := os.ReadFile(chunkFile)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(chunkFile, b, 0o644); err != nil {
		t.Fatal(err)
	}
	s = serveBackup(t, nil, repo, full)
	read := func(r string) string {
		out, _ := exec.Command(testutil.RequireTool(t, "qemu-io"), "-r", "-f", "raw", "-c", "read "+r, s.uri).CombinedOutput()
		return string(out)
	}
	for _, r := range []string{"8M 64k", "11M 2M"} {
		if out := read(r); !strings.Contains(out, "Input/output error") {
			t.Errorf("read %s over the corrupt chunk: %s", r, out)
		}
	}
	for _, r := range []string{"-P 7 0 3M", "-P 0 4M 4M", "-P 0 12M 4M"} {
		if out := read(r); strings.Contains(out, "error") || strings.Contains(out, "failed") {
			t.Errorf("read %s beside the corrupt chunk: %s", r, out)
		}
	}
	if log := s.stderr.String(); !strings.Contains(log, "corrupt") || !strings.Contains(log, `"offset":8388608`) {
		t.Errorf("serve logged no line naming the corrupt read: %s", log)
	}
}

// TestServeExt4FileReadBack: a file copied into an ext4 file system is read back
// from the served backup through nbdfuse and debugfs, with no kernel NBD module
// and no mount of the file system.
func TestServeExt4FileReadBack(t *testing.T) {
	nbdfuse := testutil.RequireTool(t, "nbdfuse")
	dir := t.TempDir()
	raw := filepath.Join(dir, "fs.raw")
	f, err := os.Create(raw)
	if err != nil {
		t.Fatal(err)
	}
	if err := errors.Join(f.Truncate(64<<20), f.Close()); err != nil {
		t.Fatal(err)
	}
	runTool(t, "mkfs.ext4", "-q", "-F", raw)
	payload := filepath.Join(dir, "payload.bin")
	data := make([]byte, 3<<20+123)
	for i := range data {
		data[i] = byte(i*31 + i>>10)
	}
	if err := os.WriteFile(payload, data, 0o644); err != nil {
		t.Fatal(err)
	}
	runTool(t, "debugfs", "-w", "-R", "write "+payload+" payload.bin", raw)

	repo := "file://" + filepath.Join(dir, "repo")
	uri, stop := testutil.ServeQemuNBD(t, raw, "", "-f", "raw")
	r := cli(t, nil, "backup", "--json", "--source", uri, "--disk", "vm1/vdb", "--repository", repo)
	stop()
	var b struct {
		Backup string `json:"backup"`
	}
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &b) != nil {
		t.Fatalf("backup: %s", r.stderr)
	}
	s := serveBackup(t, nil, repo, b.Backup)
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	fuse := exec.Command(nbdfuse, "-r", mnt, s.uri)
	fuseOut, out := newLogFile(t)
	fuse.Stdout, fuse.Stderr = out, out
	if err := fuse.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = fuse.Wait(); close(done) }()
	defer func() {
		_ = exec.Command("umount", mnt).Run()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = fuse.Process.Kill()
		}
	}()
	device := filepath.Join(mnt, "nbd")
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if st, err := os.Stat(device); err == nil && st.Size() == 64<<20 {
			break
		}
		select {
		case <-done:
			if !testutil.InCI() {
				t.Skipf("nbdfuse could not mount (no FUSE here?): %s", fuseOut.String())
			}
			t.Fatalf("nbdfuse: %s", fuseOut.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("nbdfuse did not mount in 10s: %s", fuseOut.String())
		}
	}
	got := filepath.Join(dir, "got.bin")
	runTool(t, "debugfs", "-R", "dump payload.bin "+got, device)
	if testutil.SHA256File(t, got) != testutil.SHA256File(t, payload) {
		t.Error("the file read back from the served backup differs")
	}
}

// TestServeWritableOverlay: --writable keeps writes in the overlay file, which a
// later serve of the same backup reopens; the backup never changes.
func TestServeWritableOverlay(t *testing.T) {
	dir := t.TempDir()
	repo := "file://" + filepath.Join(dir, "repo")
	full, _, raw0, _ := backupTwice(t, nil, repo)
	ov := filepath.Join(dir, "vm1.overlay")
	s := serveBackup(t, nil, repo, full, "--writable", "--overlay", ov)
	runTool(t, "nbdinfo", "--can", "write", s.uri)
	out := runTool(t, "qemu-io", "-f", "raw", "-c", "write -P 0x61 5000 70000", "-c", "write -z 8M 1M",
		"-c", "write -P 0x62 20M 4k", "-c", "flush", "-c", "read -P 7 0 4000", "-c", "read -P 0x61 5000 70000",
		"-c", "read -P 0 8M 1M", "-c", "read -P 9 9M 3M", s.uri)
	if strings.Contains(out, "error") || strings.Contains(out, "failed") {
		t.Fatalf("qemu-io on the writable export: %s", out)
	}
	if got := zeroMap(t, s.uri); strings.Join(got, ",") != "4194304 4194304,12582912 8388608,20975616 12578816" {
		t.Errorf("nbdinfo --map zero ranges with the overlay: %v", got)
	}
	s.stop()
	if _, err := os.Stat(ov + ".map"); err != nil {
		t.Fatalf("no overlay map: %v", err)
	}
	s = serveBackup(t, nil, repo, full, "--writable", "--overlay", ov)
	out = runTool(t, "qemu-io", "-r", "-f", "raw", "-c", "read -P 0x61 5000 70000", "-c", "read -P 0x62 20M 4k",
		"-c", "read -P 0 8M 1M", s.uri)
	if strings.Contains(out, "error") || strings.Contains(out, "failed") {
		t.Fatalf("the reopened overlay lost writes: %s", out)
	}
	s.stop()
	if r := cli(t, nil, "verify", "--repository", repo, "--backup", full); r.code != 0 {
		t.Fatalf("verify after writes to the overlay: %s %s", r.stdout, r.stderr)
	}
	ro := serveBackup(t, nil, repo, full)
	copied := filepath.Join(dir, "copy.raw")
	runTool(t, "nbdcopy", ro.uri, copied)
	if testutil.SHA256File(t, copied) != testutil.SHA256File(t, raw0) {
		t.Error("the backup served read-only changed after writes through an overlay")
	}
	mustFail(t, cli(t, nil, "serve", "--repository", repo, "--backup", full, "--listen", "unix://"+filepath.Join(dir, "x.sock"),
		"--overlay", ov), "--overlay needs --writable")
	mustFail(t, cli(t, nil, "serve", "--repository", repo, "--backup", full, "--listen", "unix://"+filepath.Join(dir, "x.sock"),
		"--idle-timeout", "-1s"), "--idle-timeout -1s")
}

// TestServeTLS: with a certificate, the export on TCP takes nbds:// clients only.
func TestServeTLS(t *testing.T) {
	repo := "file://" + filepath.Join(t.TempDir(), "repo")
	full, _, raw0, _ := backupTwice(t, nil, repo)
	certs := testutil.SelfSignedTLS(t)
	s := serveBackup(t, nil, repo, full, "--listen", "tcp://127.0.0.1:0", "--tls-cert", certs.Cert, "--tls-key", certs.Key)
	if !strings.HasPrefix(s.uri, "nbds://127.0.0.1:") || strings.HasSuffix(s.uri, ":0/") {
		t.Fatalf("serve printed %q", s.uri)
	}
	copied := filepath.Join(t.TempDir(), "copy.raw")
	runTool(t, "nbdcopy", s.uri+"?tls-certificates="+certs.Dir, copied)
	if testutil.SHA256File(t, copied) != testutil.SHA256File(t, raw0) {
		t.Error("the copy over TLS differs from the disk")
	}
	plain := "nbd://" + strings.TrimPrefix(s.uri, "nbds://")
	if out, err := exec.Command(testutil.RequireTool(t, "nbdinfo"), plain).CombinedOutput(); err == nil {
		t.Errorf("a client without TLS was served: %s", out)
	}
}

// TestServeTLSClientCertificates: with --tls-client-ca, only clients with a
// certificate that CA signed read the export; the others are refused during the
// TLS handshake and logged, and the export goes on serving.
func TestServeTLSClientCertificates(t *testing.T) {
	repo := "file://" + filepath.Join(t.TempDir(), "repo")
	full, _, raw0, _ := backupTwice(t, nil, repo)
	certs := testutil.X509CertificateDirs(t)
	serverFile := func(name string) string { return filepath.Join(certs.Server, name) }
	mustFail(t, cli(t, nil, "serve", "--repository", repo, "--backup", full, "--listen", "tcp://127.0.0.1:0",
		"--tls-client-ca", serverFile("ca-cert.pem")), "--tls-client-ca needs --tls-cert")
	mustFail(t, cli(t, nil, "serve", "--repository", repo, "--backup", full, "--listen", "tcp://127.0.0.1:0",
		"--tls-cert", serverFile("server-cert.pem"), "--tls-key", serverFile("server-key.pem"), "--tls-client-ca", serverFile("server-key.pem")),
		"no PEM certificate")

	s := serveBackup(t, nil, repo, full, "--listen", "tcp://127.0.0.1:0", "--tls-cert", serverFile("server-cert.pem"),
		"--tls-key", serverFile("server-key.pem"), "--tls-client-ca", serverFile("ca-cert.pem"))
	copyMatches := func(when string) {
		copied := filepath.Join(t.TempDir(), "copy.raw")
		runTool(t, "nbdcopy", s.uri+"?tls-certificates="+certs.Client, copied)
		if testutil.SHA256File(t, copied) != testutil.SHA256File(t, raw0) {
			t.Errorf("the copy with a client certificate %s differs from the disk", when)
		}
	}
	copyMatches("before other clients")
	other := testutil.X509CertificateDirs(t)
	for i, c := range []struct{ client, dir, cause string }{
		{"without a certificate", testutil.ClientCertificateDir(t, certs.Client, ""), "didn't provide a certificate"},
		{"with a certificate of another CA", testutil.ClientCertificateDir(t, certs.Client, other.Client), "unknown authority"},
	} {
		if out, err := exec.Command(testutil.RequireTool(t, "nbdinfo"), s.uri+"?tls-certificates="+c.dir).CombinedOutput(); err == nil {
			t.Errorf("a client %s was served: %s", c.client, out)
		}
		// The client may exit before the server has logged why it closed.
		var refused []string
		for deadline := time.Now().Add(5 * time.Second); len(refused) <= i && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			refused = linesWith(s.stderr.String(), `"msg":"nbd client refused"`)
		}
		if len(refused) != i+1 || !strings.Contains(refused[i], c.cause) || !strings.Contains(refused[i], `"level":"warn"`) {
			t.Errorf("refusing a client %s logged %q, want a warning saying %q", c.client, refused, c.cause)
		}
	}
	copyMatches("after refused clients")
	// qemu's client takes the same certificate directory.
	hostPort := strings.TrimSuffix(strings.TrimPrefix(s.uri, "nbds://"), "/")
	host, port, _ := strings.Cut(hostPort, ":")
	out := runTool(t, "qemu-img", "info", "--output=json", "--object", "tls-creds-x509,id=tls0,endpoint=client,dir="+certs.Client,
		"--image-opts", "driver=nbd,host="+host+",port="+port+",tls-creds=tls0")
	st, err := os.Stat(raw0)
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf(`"virtual-size": %d,`, st.Size()); !strings.Contains(out, want) {
		t.Errorf("qemu-img info with a client certificate: %s, want %s", out, want)
	}
}

// linesWith returns the lines of text that contain s.
func linesWith(text, s string) []string {
	var lines []string
	for line := range strings.Lines(text) {
		if strings.Contains(line, s) {
			lines = append(lines, line)
		}
	}
	return lines
}
