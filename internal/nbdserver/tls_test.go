package nbdserver

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/blockferry/blockferry/internal/testutil"
)

// serveOverTLS serves data on a loopback port with cfg until the test ends and
// returns the address.
func serveOverTLS(t *testing.T, data []byte, cfg *tls.Config, opts ...Option) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- New(&memDevice{data: data, blockSize: 1 << 20}, append(opts, WithTLS(cfg))...).Serve(ctx, l)
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return l.Addr().String()
}

func TestTLSIsRequiredAndServed(t *testing.T) {
	nbdinfo := testutil.RequireTool(t, "nbdinfo")
	nbdcopy := testutil.RequireTool(t, "nbdcopy")
	files := testutil.SelfSignedTLS(t)
	cert, err := tls.LoadX509KeyPair(files.Cert, files.Key)
	if err != nil {
		t.Fatal(err)
	}
	certDir := files.Dir
	data := testDisk()
	addr := serveOverTLS(t, data, &tls.Config{Certificates: []tls.Certificate{cert}})

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

// TestTLSClientCertificates: with client certificates required, a client
// without one is refused with a warning naming why, and the server goes on
// serving clients that have one.
func TestTLSClientCertificates(t *testing.T) {
	nbdinfo := testutil.RequireTool(t, "nbdinfo")
	certs := testutil.X509CertificateDirs(t)
	cert, err := tls.LoadX509KeyPair(filepath.Join(certs.Server, "server-cert.pem"), filepath.Join(certs.Server, "server-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(filepath.Join(certs.Server, "ca-cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatal("no CA certificate")
	}
	core, logs := observer.New(zapcore.InfoLevel)
	data := testDisk()
	addr := serveOverTLS(t, data, &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert},
		WithLogger(zap.New(core)))
	info := func(dir string) ([]byte, error) {
		return exec.Command(nbdinfo, "--size", "nbds://"+addr+"/?tls-certificates="+dir).CombinedOutput()
	}

	if out, err := info(testutil.ClientCertificateDir(t, certs.Client, "")); err == nil {
		t.Fatalf("a client without a certificate was served: %s", out)
	}
	// The client may exit before the server has logged why it closed.
	var refused []observer.LoggedEntry
	for deadline := time.Now().Add(5 * time.Second); len(refused) == 0 && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		refused = logs.FilterMessage("nbd client refused").FilterLevelExact(zapcore.WarnLevel).All()
	}
	if len(refused) != 1 || !strings.Contains(refused[0].ContextMap()["error"].(string), "certificate") {
		t.Errorf("refusing a client without a certificate logged %+v, want one warning naming the certificate", logs.All())
	}
	if out, err := info(certs.Client); err != nil || strings.TrimSpace(string(out)) != strconv.Itoa(len(data)) {
		t.Errorf("a client with a certificate of the CA: %v\n%s", err, out)
	}
}
