package nbd

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/blockferry/blockferry/backends"
	"github.com/blockferry/blockferry/internal/testutil"
)

// serveTLS serves a writable raw image of want's contents with qemu-nbd, which
// requires TLS with the credentials object given ("tls-creds-x509,…" or
// "tls-creds-psk,…", id tls0), and returns the socket's nbds+unix URI.
func serveTLS(t *testing.T, want []byte, creds string) string {
	t.Helper()
	image := filepath.Join(t.TempDir(), "disk.raw")
	if err := os.WriteFile(image, want, 0o600); err != nil {
		t.Fatal(err)
	}
	uri, _ := testutil.ServeQemuNBD(t, image, "", "--format=raw", testutil.QemuNBDWritable,
		"--object", creds, "--tls-creds=tls0")
	return "nbds+unix" + strings.TrimPrefix(uri, "nbd+unix")
}

func randomDisk(size int64) []byte {
	b := make([]byte, size)
	_, _ = rand.NewChaCha8([32]byte{7}).Read(b)
	return b
}

// TestTLSCertificates: an export that requires TLS with client certificates is
// read and written through nbds+unix:// with the certificate directory, and
// refused clearly without it or without TLS.
func TestTLSCertificates(t *testing.T) {
	certs := testutil.X509CertificateDirs(t)
	want := randomDisk(4 * mib)
	uri := serveTLS(t, want, "tls-creds-x509,id=tls0,endpoint=server,dir="+certs.Server)
	ctx := context.Background()

	s, err := backends.OpenSource(ctx, uri, backends.WithTLS(backends.TLS{Certificates: certs.Client}), backends.WithConnections(2))
	if err != nil {
		t.Fatal(err)
	}
	if got := readConcurrently(t, s, 2, 256*kib); !bytes.Equal(got, want) {
		t.Error("read over TLS differs from the image")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	tg, err := backends.OpenTarget(ctx, uri, backends.WithSize(4*mib), backends.WithTargetTLS(backends.TLS{Certificates: certs.Client}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tg.WriteAt(bytes.Repeat([]byte{0xab}, int(64*kib)), 0); err != nil {
		t.Fatal(err)
	}
	if err := tg.Close(); err != nil {
		t.Fatal(err)
	}

	_, err = backends.OpenSource(ctx, uri)
	t.Logf("without certificates: %v", err)
	if !errors.Is(err, backends.ErrTLS) || !strings.Contains(err.Error(), "no certificate directory or PSK file") {
		t.Errorf("without certificates: %v, want ErrTLS saying no certificates are set", err)
	}
	other := testutil.X509CertificateDirs(t) // a CA the server does not know
	if _, err := backends.OpenTarget(ctx, uri, backends.WithTargetTLS(backends.TLS{Certificates: other.Client})); !errors.Is(err, backends.ErrTLS) {
		t.Errorf("certificates of another CA: %v, want ErrTLS", err)
	}
	plain := "nbd+unix" + strings.TrimPrefix(uri, "nbds+unix")
	if _, err := backends.OpenSource(ctx, plain); !errors.Is(err, backends.ErrTLS) || !strings.Contains(err.Error(), "nbds") {
		t.Errorf("without TLS: %v, want ErrTLS naming nbds", err)
	}
}

// TestTLSPSK: a pre-shared key authenticates as well, and a wrong one does not.
func TestTLSPSK(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "keys.psk"), []byte("blockferry:0123456789abcdef0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	want := randomDisk(1 * mib)
	uri := serveTLS(t, want, "tls-creds-psk,id=tls0,endpoint=server,dir="+dir)
	ctx := context.Background()

	psk := backends.TLS{PSKFile: filepath.Join(dir, "keys.psk"), Username: "blockferry"}
	s, err := backends.OpenSource(ctx, uri, backends.WithTLS(psk))
	if err != nil {
		t.Fatal(err)
	}
	if got := readConcurrently(t, s, 1, 256*kib); !bytes.Equal(got, want) {
		t.Error("read over TLS-PSK differs from the image")
	}
	_ = s.Close()

	wrong := filepath.Join(t.TempDir(), "keys.psk")
	if err := os.WriteFile(wrong, []byte("blockferry:ffffffffffffffffffffffffffffffff\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := backends.OpenSource(ctx, uri, backends.WithTLS(backends.TLS{PSKFile: wrong, Username: "blockferry"})); !errors.Is(err, backends.ErrTLS) {
		t.Errorf("wrong key: %v, want ErrTLS", err)
	}
}

// TestTLSQueryOnPlainScheme: ?tls=… on nbd:// or nbd+unix:// would connect in
// clear text; it is refused before anything is dialled.
func TestTLSQueryOnPlainScheme(t *testing.T) {
	ctx := context.Background()
	sock := filepath.Join(t.TempDir(), "none.sock") // nothing listens: the refusal comes first
	for _, uri := range []string{"nbd+unix:///?socket=" + sock + "&tls=require", "nbd://127.0.0.1:1/x?tls-certificates=/etc/pki"} {
		if _, err := backends.OpenSource(ctx, uri); !errors.Is(err, backends.ErrInvalidSource) || !strings.Contains(err.Error(), "nbds") {
			t.Errorf("source %s: %v, want ErrInvalidSource naming nbds", uri, err)
		}
		if _, err := backends.OpenTarget(ctx, uri); !errors.Is(err, backends.ErrInvalidTarget) {
			t.Errorf("target %s: %v, want ErrInvalidTarget", uri, err)
		}
	}
}
