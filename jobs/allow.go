package jobs

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// An allow-list pattern is a URI of a source or target kind whose parts are
// matched one by one, each with path.Match, after the job's URI is normalised:
//
//	file:///var/lib/blockferry/restore/*      files directly in that directory
//	file:///srv/images/**                     files anywhere under that directory
//	nbd+unix:///*?socket=/run/blockferry/*.sock
//	nbd://*.hv.example.net:10809/*            (the port defaults to 10809)
//
// A file path has no ".." and its symlinks are resolved before it is matched; the
// socket of an nbd+unix URI is matched as a file path (resolved the same way).
// A TCP host is matched as the job spells it, lower-cased; a job's URI carries no
// query but the socket (TLS comes from the worker's settings).
type uriPattern struct {
	scheme, host, port, path, socket string
}

const defaultNBDPort = "10809"

// nbdURI is a source or target URI in its parts.
type nbdURI = uriPattern

// parsePattern reads an allow-list entry.
func parsePattern(s string) (uriPattern, error) {
	p, err := splitURI(s)
	if err != nil {
		return uriPattern{}, fmt.Errorf("pattern %q: %w", s, err)
	}
	for _, glob := range []string{p.host, p.port, p.path, strings.TrimSuffix(p.socket, "**")} {
		if _, err := path.Match(glob, ""); err != nil {
			return uriPattern{}, fmt.Errorf("pattern %q: %w", s, err)
		}
	}
	return p, nil
}

// splitURI takes a source or target URI apart, refusing what no pattern may
// match: user info, fragments, relative or ".." paths, queries other than an
// nbd+unix socket.
func splitURI(s string) (nbdURI, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nbdURI{}, errors.New("not a URI")
	}
	p := nbdURI{scheme: u.Scheme, path: u.Path}
	if p.scheme == "" {
		p.scheme = "file"
	}
	if u.User != nil || u.Fragment != "" || u.Opaque != "" {
		return nbdURI{}, errors.New("user info, fragments and opaque URIs are not accepted")
	}
	q := u.Query()
	switch p.scheme {
	case "file":
		if (u.Host != "" && u.Host != "localhost") || u.RawQuery != "" {
			return nbdURI{}, errors.New("a file URI has no host and no query")
		}
	case "nbd+unix", "nbds+unix":
		if u.Host != "" || len(q) != 1 || len(q["socket"]) != 1 {
			return nbdURI{}, errors.New("an nbd+unix URI has no host and exactly one query parameter, socket")
		}
		p.socket = q.Get("socket")
		if err := checkPath(p.socket); err != nil {
			return nbdURI{}, fmt.Errorf("socket: %w", err)
		}
	case "nbd", "nbds":
		if u.RawQuery != "" {
			return nbdURI{}, fmt.Errorf("a job's %s URI takes no query: TLS and other settings are the worker's", p.scheme)
		}
		p.host, p.port = strings.ToLower(u.Hostname()), u.Port()
		if p.host == "" {
			return nbdURI{}, errors.New("no host")
		}
		if p.port == "" {
			p.port = defaultNBDPort
		}
	default:
		return nbdURI{}, fmt.Errorf("scheme %q is not a source or target kind", p.scheme)
	}
	if p.path == "" {
		p.path = "/"
	}
	if p.scheme == "file" {
		return p, checkPath(p.path)
	}
	return p, nil
}

// checkPath requires an absolute path without "." or ".." parts or repeated
// slashes: the path a pattern matches is the path that is opened.
func checkPath(p string) error {
	if !strings.HasPrefix(p, "/") || strings.ContainsRune(p, 0) {
		return errors.New("not an absolute path")
	}
	if path.Clean(p) != p && path.Clean(p)+"/" != p {
		return errors.New("a path with . or .. parts or repeated slashes")
	}
	return nil
}

// matchPath is path.Match, except that a pattern ending in "/**" matches
// anything under a directory its first part matches ("/**": any absolute path).
func matchPath(pattern, p string) bool {
	dir, ok := strings.CutSuffix(pattern, "/**")
	if !ok {
		ok, _ := path.Match(pattern, p)
		return ok
	}
	if dir == "" {
		return strings.HasPrefix(p, "/")
	}
	for d := path.Dir(p); d != "/" && d != "."; d = path.Dir(d) {
		if ok, _ := path.Match(dir, d); ok {
			return true
		}
	}
	return false
}

func (pat uriPattern) match(u nbdURI) bool {
	if pat.scheme != u.scheme || !matchPath(pat.path, u.path) || !matchPath(pat.socket, u.socket) {
		return false
	}
	host, _ := path.Match(pat.host, u.host)
	port, _ := path.Match(pat.port, u.port)
	return host && port
}

func allowed(list []uriPattern, u nbdURI) bool {
	for _, pat := range list {
		if pat.match(u) {
			return true
		}
	}
	return false
}

// admitURI splits a job's URI and matches it as written, then with its file path
// or socket resolved (when it exists), so that neither a path outside the list
// nor a symlink out of it passes. It returns the resolved URI.
func admitURI(list []uriPattern, s string) (nbdURI, error) {
	u, err := splitURI(s)
	if err != nil {
		return nbdURI{}, fmt.Errorf("%w: %v", ErrForbidden, err)
	}
	if !allowed(list, u) {
		return nbdURI{}, fmt.Errorf("%w: not in the worker's allow-list", ErrForbidden)
	}
	resolve := &u.path
	if u.scheme != "file" {
		resolve = &u.socket
	}
	if *resolve == "" {
		return u, nil
	}
	real, err := resolvePath(*resolve)
	if err != nil {
		return nbdURI{}, err
	}
	*resolve = real
	if !allowed(list, u) {
		return nbdURI{}, fmt.Errorf("%w: resolves to %s, which is not in the worker's allow-list", ErrForbidden, quoteShort(real))
	}
	return u, nil
}

// resolvePath resolves the symlinks of p; of a path that does not exist, those of
// its directory.
func resolvePath(p string) (string, error) {
	real, err := filepath.EvalSymlinks(p)
	if err == nil {
		return real, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("%w: %v", ErrForbidden, err)
	}
	if _, lerr := os.Lstat(p); lerr == nil { // a dangling symlink
		return "", fmt.Errorf("%w: a symlink to nothing", ErrForbidden)
	}
	dir, err := filepath.EvalSymlinks(filepath.Dir(p))
	if errors.Is(err, fs.ErrNotExist) {
		return p, nil // nothing to follow; opening it fails
	}
	if err != nil {
		return "", fmt.Errorf("%w: its directory: %v", ErrForbidden, err)
	}
	return filepath.Join(dir, filepath.Base(p)), nil
}

func (u nbdURI) String() string {
	switch u.scheme {
	case "file":
		return (&url.URL{Scheme: "file", Path: u.path}).String()
	case "nbd+unix", "nbds+unix":
		// libnbd takes the socket path as written; slashes need no escaping.
		socket := strings.ReplaceAll(url.QueryEscape(u.socket), "%2F", "/")
		return (&url.URL{Scheme: u.scheme, Path: u.path, RawQuery: "socket=" + socket}).String()
	}
	return (&url.URL{Scheme: u.scheme, Host: net.JoinHostPort(u.host, u.port), Path: u.path}).String()
}

// admitSource checks a job's source: allowed, and for a file, a regular file or a
// block device (never a directory, a character device or a FIFO).
func admitSource(list []uriPattern, s string) (string, error) {
	u, err := admitURI(list, s)
	if err != nil {
		return "", err
	}
	if u.scheme == "file" {
		st, err := os.Stat(u.path)
		if err == nil && !st.Mode().IsRegular() && st.Mode().Type() != fs.ModeDevice {
			return "", fmt.Errorf("%w: a file source must be a regular file or a block device, not %s", ErrForbidden, st.Mode().Type())
		}
	}
	return u.String(), nil
}

// admitTarget checks a restore target: allowed, and for a file, either a new file
// in an existing directory or, when the job says overwrite, an existing regular
// file or block device.
func admitTarget(list []uriPattern, s string, overwrite bool) (string, error) {
	u, err := admitURI(list, s)
	if err != nil {
		return "", err
	}
	if u.scheme != "file" {
		return u.String(), nil
	}
	st, err := os.Lstat(u.path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return u.String(), nil
	case err != nil:
		return "", fmt.Errorf("%w: %v", ErrForbidden, err)
	case !st.Mode().IsRegular() && st.Mode().Type() != fs.ModeDevice:
		return "", fmt.Errorf("%w: a file target must be a regular file or a block device, not %s", ErrForbidden, st.Mode().Type())
	case !overwrite:
		return "", fmt.Errorf("%w: the target exists; a restore writes over it only with \"overwrite\": true", ErrForbidden)
	}
	return u.String(), nil
}

// A serve job's listen address is matched against the worker's listen
// allow-list, whose entries are listen addresses with globs:
//
//	unix:///run/blockferry/serve/*.sock     sockets directly in that directory
//	tcp://127.0.0.1:*                       any port on loopback
//
// A socket path is matched as written and with its directory's symlinks
// resolved, like a file path. TCP is on loopback only, in the list and in jobs:
// a job's export is plain NBD, without TLS, which anyone who reaches the port
// could read.
func splitListen(s string, pattern bool) (uriPattern, error) {
	if hostPort, ok := strings.CutPrefix(s, "tcp://"); ok {
		// Not url.Parse: a pattern's port may be a glob.
		host, port, err := net.SplitHostPort(hostPort)
		p := uriPattern{scheme: "tcp", host: strings.ToLower(host), port: port, path: "/"}
		switch {
		case err != nil || port == "" || strings.ContainsAny(hostPort, "/?#@"):
			return uriPattern{}, errors.New("a tcp listen address is tcp://host:port")
		case p.host != "localhost" && (net.ParseIP(p.host) == nil || !net.ParseIP(p.host).IsLoopback()):
			return uriPattern{}, errors.New("a serve job's export has no TLS: tcp on a loopback address only")
		}
		if _, err := path.Match(p.port, ""); pattern && err != nil {
			return uriPattern{}, err
		}
		return p, nil
	}
	u, err := url.Parse(s)
	if err != nil {
		return uriPattern{}, errors.New("not a URI")
	}
	if u.Scheme != "unix" {
		return uriPattern{}, fmt.Errorf("scheme %q: want unix:// or tcp://", u.Scheme)
	}
	if u.User != nil || u.Fragment != "" || u.Opaque != "" || u.RawQuery != "" || u.Host != "" {
		return uriPattern{}, errors.New("a unix listen address is unix:///path/to.sock, without host, query or fragment")
	}
	return uriPattern{scheme: "unix", path: u.Path}, checkPath(u.Path)
}

func compileListenPatterns(list []string) ([]uriPattern, error) {
	out := make([]uriPattern, 0, len(list))
	for _, s := range list {
		pat, err := splitListen(s, true)
		if err == nil && pat.scheme == "unix" {
			_, err = path.Match(strings.TrimSuffix(pat.path, "**"), "")
		}
		if err != nil {
			return nil, fmt.Errorf("pattern %q: %w", s, err)
		}
		out = append(out, pat)
	}
	return out, nil
}

// admitListen checks a serve job's listen address and returns it with its
// socket's directory resolved: the address that is listened on.
func admitListen(list []uriPattern, s string) (string, error) {
	u, err := splitListen(s, false)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrForbidden, err)
	}
	if !allowed(list, u) {
		return "", fmt.Errorf("%w: not in the worker's listen allow-list", ErrForbidden)
	}
	if u.scheme == "tcp" {
		return "tcp://" + net.JoinHostPort(u.host, u.port), nil
	}
	real, err := resolvePath(u.path)
	if err != nil {
		return "", err
	}
	u.path = real
	if !allowed(list, u) {
		return "", fmt.Errorf("%w: resolves to %s, which is not in the worker's listen allow-list", ErrForbidden, quoteShort(real))
	}
	return (&url.URL{Scheme: "unix", Path: real}).String(), nil
}
