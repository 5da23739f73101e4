package testutil

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// QemuNBDWritable, passed to ServeQemuNBD among its extra arguments, serves the
// image writable instead of read-only. qemu-nbd itself has no such flag; the
// helper removes it.
const QemuNBDWritable = "--writable"

// QemuImg runs qemu-img with args, failing the test on error, and returns its
// output.
func QemuImg(t testing.TB, args ...string) string {
	t.Helper()
	return run(t, RequireTool(t, "qemu-img"), args...)
}

// QemuIO runs qemu-io commands (for example "write -P 0xab 0 64k", "write -z 1M
// 64k") against a qcow2 image, failing the test if any of them fails. The image
// must not be served by qemu-nbd at the time: qemu-nbd locks it.
func QemuIO(t testing.TB, image string, cmds ...string) {
	t.Helper()
	args := []string{"-f", "qcow2"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	run(t, RequireTool(t, "qemu-io"), append(args, image)...)
}

// MakeQcow2 creates an empty qcow2 image of size bytes at path.
func MakeQcow2(t testing.TB, path string, size int64) {
	t.Helper()
	QemuImg(t, "create", "-q", "-f", "qcow2", path, strconv.FormatInt(size, 10))
}

// AddBitmap adds a persistent dirty bitmap to a qcow2 image: writes made after
// this are what an incremental backup reads.
func AddBitmap(t testing.TB, image, name string) {
	t.Helper()
	QemuImg(t, "bitmap", "--add", image, name)
}

// ConvertToRaw writes the guest-visible contents of image to the raw file raw.
func ConvertToRaw(t testing.TB, image, raw string) {
	t.Helper()
	QemuImg(t, "convert", "-O", "raw", image, raw)
}

// SHA256File returns the hex SHA-256 of a file's contents.
func SHA256File(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatalf("hash %s: %v", path, err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func run(t testing.TB, prog string, args ...string) string {
	t.Helper()
	out, err := exec.Command(prog, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(prog), strings.Join(args, " "), err, out)
	}
	return string(out)
}

// ServeQemuNBD serves a qcow2 image with qemu-nbd on a Unix socket in a temporary
// directory and returns its URI and a function that stops the server (waiting
// until it exited and released its lock on the image). stop may be called more
// than once and also runs when the test ends.
//
// The export is read-only unless extraArgs holds QemuNBDWritable. bitmap, when
// not empty, is exported as the meta context "qemu:dirty-bitmap:"+bitmap. The
// server allows 8 clients at once, which makes qemu-nbd advertise multi-conn, and
// keeps running when clients disconnect (without --persistent it exits after the
// first client leaves). extraArgs come before the image name; a -f/--format there
// replaces the default qcow2.
func ServeQemuNBD(t testing.TB, image, bitmap string, extraArgs ...string) (uri string, stop func()) {
	t.Helper()
	prog := RequireTool(t, "qemu-nbd")
	dir := t.TempDir()
	sock := filepath.Join(dir, "nbd.sock")
	pidFile := filepath.Join(dir, "qemu-nbd.pid")
	args := []string{"--socket=" + sock, "--pid-file=" + pidFile, "--persistent", "--shared=8"}
	readOnly, format := true, true
	var extra []string
	for _, a := range extraArgs {
		switch {
		case a == QemuNBDWritable:
			readOnly = false
			continue
		case a == "-f" || strings.HasPrefix(a, "--format"):
			format = false
		}
		extra = append(extra, a)
	}
	if format {
		args = append(args, "--format=qcow2")
	}
	if readOnly {
		args = append(args, "--read-only")
	}
	if bitmap != "" {
		args = append(args, "--bitmap="+bitmap)
	}
	args = append(append(args, extra...), image)
	stop = serve(t, prog, args, pidFile)
	return "nbd+unix:///?socket=" + sock, stop
}

// ServeNbdkit runs nbdkit with args (filters, plugin, plugin parameters, as on its
// command line) on a Unix socket in a temporary directory and returns its URI and
// an idempotent stop function that also runs when the test ends.
//
//	uri, stop := ServeNbdkit(t, "--filter=error", "memory", "16M", "error-rate=0.5")
func ServeNbdkit(t testing.TB, args ...string) (uri string, stop func()) {
	t.Helper()
	prog := RequireTool(t, "nbdkit")
	dir := t.TempDir()
	sock := filepath.Join(dir, "nbd.sock")
	pidFile := filepath.Join(dir, "nbdkit.pid")
	all := append([]string{"--foreground", "--exit-with-parent", "--unix", sock, "--pidfile", pidFile}, args...)
	stop = serve(t, prog, all, pidFile)
	return "nbd+unix:///?socket=" + sock, stop
}

// ServeNbdkitMemory serves a writable, initially zero RAM disk of size (nbdkit
// syntax, such as "16M"). Each of filterArgs is a filter name ("error",
// "nozero", or "--filter=delay") or a key=value parameter for the filters
// ("error-rate=0.1", "delay-read=10ms"):
//
//	uri, stop := ServeNbdkitMemory(t, "16M", "error", "error-pread-rate=1")
func ServeNbdkitMemory(t testing.TB, size string, filterArgs ...string) (uri string, stop func()) {
	t.Helper()
	var filters, params []string
	for _, a := range filterArgs {
		switch {
		case strings.HasPrefix(a, "--filter"):
			filters = append(filters, a)
		case strings.Contains(a, "="):
			params = append(params, a)
		default:
			filters = append(filters, "--filter="+a)
		}
	}
	args := append(append(filters, "memory", "size="+size), params...)
	return ServeNbdkit(t, args...)
}

// serve starts a server that writes pidFile once its socket accepts connections,
// waits for that, and returns an idempotent stop function registered for cleanup.
// Both qemu-nbd and nbdkit write the pid file only once they are listening, so no
// probe connection is needed (one could make a server without --persistent exit).
func serve(t testing.TB, prog string, args []string, pidFile string) func() {
	t.Helper()
	var out bytes.Buffer
	cmd := exec.Command(prog, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", prog, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()

	var once sync.Once
	stop := func() {
		once.Do(func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(10 * time.Second):
				_ = cmd.Process.Kill()
				<-exited
			}
		})
	}
	t.Cleanup(stop)

	deadline := time.After(15 * time.Second)
	for {
		if st, err := os.Stat(pidFile); err == nil && st.Size() > 0 {
			return stop
		}
		select {
		case <-exited:
			t.Fatalf("%s %s exited before it was ready:\n%s", filepath.Base(prog), strings.Join(args, " "), out.String())
		case <-deadline:
			stop()
			t.Fatalf("%s did not become ready in 15s:\n%s", filepath.Base(prog), out.String())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// ExportSHA256 copies an NBD export to a raw file in a temporary directory with
// nbdcopy and returns the copy's sha256: the export's content at that time.
func ExportSHA256(t testing.TB, uri string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "export.raw")
	run(t, RequireTool(t, "nbdcopy"), uri, out)
	sum := SHA256File(t, out)
	os.Remove(out)
	return sum
}
