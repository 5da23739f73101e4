package nbdserver

import (
	"context"
	"crypto/tls"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/blockferry/blockferry/internal/testutil"
)

func TestTLSIsRequiredAndServed(t *testing.T) {
	nbdinfo := testutil.RequireTool(t, "nbdinfo")
	nbdcopy := testutil.RequireTool(t, "nbdcopy")
	files := testutil.SelfSignedTLS(t)
	cert, err := tls.LoadX509KeyPair(files.Cert, files.Key)
	if err != nil {
		t.Fatal(err)
	}
	certDir := files.Dir
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	data := testDisk()
	done := make(chan error, 1)
	go func() {
		done <- New(&memDevice{data: data, blockSize: 1 << 20}, WithTLS(&tls.Config{Certificates: []tls.Certificate{cert}})).Serve(ctx, l)
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	addr := l.Addr().String()

	out, err := exec.Command(nbdinfo, "--map", "nbds://"+addr+"/?tls-certificates="+certDir).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "hole,zero") {
		t.Fatalf("nbdinfo over TLS: %v\n%s", err, out)
	}
	copied := filepath.Join(t.TempDir(), "copy.raw")
	if out, err := exec.Command(nbdcopy, "nbds://"+addr+"/?tls-certificates="+certDir, copied).CombinedOutput(); err != nil {
		t.Fatalf("nbdcopy over TLS: %v\n%s", err, out)
	}
	if testutil.SHA256File(t, copied) != sha(data) {
		t.Error("the copy over TLS differs")
	}
	if out, err := exec.Command(nbdinfo, "nbd://"+addr+"/").CombinedOutput(); err == nil {
		t.Errorf("a client without TLS was served: %s", out)
	}
}
