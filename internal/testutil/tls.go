package testutil

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TLSFiles are a self-signed server certificate for 127.0.0.1 (its own CA) and
// its key, as PEM files in Dir, which holds the certificate as ca-cert.pem too,
// the name libnbd's tls-certificates directory takes:
//
//	nbdinfo 'nbds://127.0.0.1:10809/?tls-certificates=DIR'
type TLSFiles struct {
	Dir, Cert, Key string
}

// SelfSignedTLS writes TLSFiles valid for an hour into a temporary directory.
func SelfSignedTLS(t testing.TB) TLSFiles {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	f := TLSFiles{Dir: dir, Cert: filepath.Join(dir, "server-cert.pem"), Key: filepath.Join(dir, "server-key.pem")}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	for path, data := range map[string][]byte{
		f.Cert: certPEM, filepath.Join(dir, "ca-cert.pem"): certPEM,
		f.Key: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// X509Dirs are certificate directories of a CA made for one test: Server in
// qemu's layout for tls-creds-x509 endpoint=server (ca-cert.pem,
// server-cert.pem, server-key.pem), Client in libnbd's (ca-cert.pem,
// client-cert.pem, client-key.pem). The server certificate names localhost and
// 127.0.0.1.
type X509Dirs struct {
	Server, Client string
}

// X509CertificateDirs writes X509Dirs valid for an hour into temporary
// directories.
func X509CertificateDirs(t testing.TB) X509Dirs {
	t.Helper()
	caKey, caCert := newCertificate(t, &x509.Certificate{
		Subject: pkix.Name{CommonName: "blockferry test CA"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}, nil, nil)
	d := X509Dirs{Server: t.TempDir(), Client: t.TempDir()}
	for _, end := range []struct {
		dir, name string
		tmpl      *x509.Certificate
	}{
		{d.Server, "server", &x509.Certificate{Subject: pkix.Name{CommonName: "localhost"}, DNSNames: []string{"localhost"},
			IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}},
		{d.Client, "client", &x509.Certificate{Subject: pkix.Name{CommonName: "blockferry test client"},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}},
	} {
		end.tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		key, cert := newCertificate(t, end.tmpl, caCert, caKey)
		for name, data := range map[string][]byte{
			"ca-cert.pem": certPEM(caCert), end.name + "-cert.pem": certPEM(cert), end.name + "-key.pem": keyPEM(t, key),
		} {
			if err := os.WriteFile(filepath.Join(end.dir, name), data, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	return d
}

// newCertificate makes a key and a certificate of it from tmpl, signed by
// parent's key (self-signed when parent is nil), valid for an hour.
func newCertificate(t testing.TB, tmpl, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*ecdsa.PrivateKey, *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber, tmpl.NotBefore, tmpl.NotAfter = serial, time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return key, cert
}

func certPEM(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

func keyPEM(t testing.TB, key *ecdsa.PrivateKey) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// ClientCertificateDir writes a libnbd certificate directory that trusts the CA
// of the X509Dirs directory trust (its ca-cert.pem) and holds the client
// certificate and key from the directory identity, or none when identity is "":
// a client that accepts the server but presents another CA's certificate, or
// no certificate at all.
func ClientCertificateDir(t testing.TB, trust, identity string) string {
	t.Helper()
	files := map[string]string{"ca-cert.pem": trust}
	if identity != "" {
		files["client-cert.pem"], files["client-key.pem"] = identity, identity
	}
	dir := t.TempDir()
	for name, from := range files {
		data, err := os.ReadFile(filepath.Join(from, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}
