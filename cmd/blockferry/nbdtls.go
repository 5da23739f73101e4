package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/spf13/pflag"

	"github.com/blockferry/blockferry/backends"
)

// nbdTLSFlags say how the worker and the commands authenticate to NBD exports
// that require TLS (nbds://, nbds+unix://). In the configuration file they may
// also be the section
//
//	nbd_tls: {certificates: /etc/pki/blockferry, verify_peer: true}   # or psk_file: …
type nbdTLSFlags struct {
	certificates string
	pskFile      string
	username     string
	verifyPeer   bool
}

func (t *nbdTLSFlags) register(f *pflag.FlagSet) {
	f.StringVar(&t.certificates, "nbd-tls-certificates", "", "directory of ca-cert.pem, client-cert.pem and client-key.pem (libnbd's and qemu's layout) for NBD exports reached over TLS (nbds://, nbds+unix://)")
	f.StringVar(&t.pskFile, "nbd-tls-psk-file", "", "file of username:hex-key lines (psktool's format) authenticating to NBD exports over TLS instead of certificates")
	f.StringVar(&t.username, "nbd-tls-username", "", "the PSK file's user to authenticate as (default: the login name)")
	f.BoolVar(&t.verifyPeer, "nbd-tls-verify-peer", true, "require the NBD server's certificate to chain to ca-cert.pem (false only for tests: the connection is then not authenticated)")
	settings(f, "nbd-tls-certificates", "nbd-tls-psk-file", "nbd-tls-username", "nbd-tls-verify-peer")
}

// tls checks the settings and returns them for the backends: one of a
// certificate directory or a PSK file, and secrets that only their owner may
// read.
func (t *nbdTLSFlags) tls() (backends.TLS, error) {
	out := backends.TLS{Certificates: t.certificates, PSKFile: t.pskFile, Username: t.username, SkipVerifyPeer: !t.verifyPeer}
	if t.certificates != "" && t.pskFile != "" {
		return out, errors.New("--nbd-tls-certificates and --nbd-tls-psk-file: one or the other")
	}
	if t.certificates != "" {
		st, err := os.Stat(t.certificates)
		if err != nil {
			return out, fmt.Errorf("--nbd-tls-certificates: %w", err)
		}
		if !st.IsDir() {
			return out, fmt.Errorf("--nbd-tls-certificates %s: not a directory", t.certificates)
		}
		if err := ownerOnly(filepath.Join(t.certificates, "client-key.pem"), true); err != nil {
			return out, fmt.Errorf("--nbd-tls-certificates: %w", err)
		}
	}
	if t.pskFile != "" {
		if err := ownerOnly(t.pskFile, false); err != nil {
			return out, fmt.Errorf("--nbd-tls-psk-file: %w", err)
		}
	}
	return out, nil
}

// ownerOnly refuses a secret file that group or others may read; a missing file
// passes when optional.
func ownerOnly(path string, optional bool) error {
	st, err := os.Stat(path)
	if optional && errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("%s is open to group or others (mode %04o): chmod 600 it", path, perm)
	}
	return nil
}
