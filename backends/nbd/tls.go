package nbd

import (
	"errors"
	"fmt"
	"net/url"
	"strings"

	"libguestfs.org/libnbd"

	"github.com/blockferry/blockferry/backends"
)

// newEndpoint is the endpoint of u, authenticated with t when u's scheme is one
// of TLS (nbds, nbds+unix). A TLS query on a plain scheme (?tls=on, ?tls-…) is
// refused, wrapping invalid: libnbd would connect without TLS and never say so.
func newEndpoint(u *url.URL, t backends.TLS, invalid error) (endpoint, error) {
	ep := endpoint{uri: u.String(), shown: u.Redacted()}
	if strings.HasPrefix(u.Scheme, "nbds") {
		ep.tls = &t
		return ep, nil
	}
	for key := range u.Query() {
		if key == "tls" || strings.HasPrefix(key, "tls-") {
			return endpoint{}, fmt.Errorf("nbd %s: %w: the query %q asks for TLS, which %s:// never uses: write nbds%s:// (certificates and keys are settings, not part of the URI)",
				ep.shown, invalid, key, u.Scheme, strings.TrimPrefix(u.Scheme, "nbd"))
		}
	}
	return ep, nil
}

// applyTLS gives a new handle the endpoint's TLS settings. The URI turns TLS on
// (nbds schemes require it); these say how to authenticate.
func (ep endpoint) applyTLS(h *libnbd.Libnbd) error {
	t := ep.tls
	if t == nil {
		return nil
	}
	if t.Certificates != "" {
		if err := h.SetTlsCertificates(t.Certificates); err != nil {
			return fmt.Errorf("TLS certificates %s: %w", t.Certificates, err)
		}
	}
	if t.PSKFile != "" {
		if err := h.SetTlsPskFile(t.PSKFile); err != nil {
			return fmt.Errorf("TLS PSK file %s: %w", t.PSKFile, err)
		}
	}
	if t.Username != "" {
		if err := h.SetTlsUsername(t.Username); err != nil {
			return fmt.Errorf("TLS username: %w", err)
		}
	}
	return h.SetTlsVerifyPeer(!t.SkipVerifyPeer)
}

// tlsFailed tells a handshake that failed on TLS (gnutls refused a certificate
// or key, the server wants TLS and the URI has none) from other failures: no
// retry fixes those, the settings or the URI do.
func tlsFailed(err error) bool {
	var le *libnbd.LibnbdError
	return errors.As(err, &le) && (strings.Contains(le.Errmsg, "gnutls") || strings.Contains(le.Errmsg, "TLS"))
}

// tlsHint says what the client used, for the message of a failed TLS handshake.
func (ep endpoint) tlsHint() string {
	t := ep.tls
	switch {
	case t == nil:
		return "the URI does not use TLS; a server that requires it takes nbds:// or nbds+unix://"
	case t.Certificates != "":
		return "client certificates from " + t.Certificates
	case t.PSKFile != "":
		return "pre-shared key from " + t.PSKFile
	}
	return "no certificate directory or PSK file is set (nbd-tls settings), so only the system's CAs and no client certificate"
}
