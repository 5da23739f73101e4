package jobs

import (
	"cmp"
	"context"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/blockferry/blockferry/internal/nbdserver"
	"github.com/blockferry/blockferry/sinks/repository"
)

// Serve jobs' lifetimes, when the worker's policy says nothing.
const (
	// DefaultMaxServeLifetime bounds a serve job's lifetime and is the lifetime
	// of one that names none.
	DefaultMaxServeLifetime = 24 * time.Hour
)

// ListenAddress is where an NBD export listens and the URI clients connect to.
type ListenAddress struct {
	Network, Address, URI string
}

// ParseListen reads a listen address, unix:///path/to.sock or tcp://host:port,
// for the export name; the URI is nbds:// with TLS.
func ParseListen(listen, name string, useTLS bool) (ListenAddress, error) {
	u, err := url.Parse(listen)
	if err != nil {
		return ListenAddress{}, fmt.Errorf("listen: %w", err)
	}
	exportPath, scheme := "/"+url.PathEscape(name), "nbd"
	if useTLS {
		scheme = "nbds"
	}
	switch {
	case u.Scheme == "unix" && u.Host == "" && u.Path != "" && u.RawQuery == "" && u.User == nil:
		socket := strings.ReplaceAll(url.QueryEscape(u.Path), "%2F", "/")
		return ListenAddress{"unix", u.Path, scheme + "+unix://" + exportPath + "?socket=" + socket}, nil
	case u.Scheme == "tcp" && u.Host != "" && strings.Trim(u.Path, "/") == "" && u.RawQuery == "" && u.User == nil:
		return ListenAddress{"tcp", u.Host, scheme + "://" + u.Host + exportPath}, nil
	}
	return ListenAddress{}, fmt.Errorf("listen %q: want unix:///path/to.sock or tcp://host:port", listen)
}

// Listen listens on a; for TCP port 0 the URI names the port chosen. A Unix
// socket left behind by a process that died (nothing accepts on it) is replaced.
func (a ListenAddress) Listen(ctx context.Context) (net.Listener, ListenAddress, error) {
	if a.Network == "unix" {
		removeStaleSocket(ctx, a.Address)
	}
	l, err := (&net.ListenConfig{}).Listen(ctx, a.Network, a.Address)
	if err != nil {
		return nil, a, err
	}
	if a.Network == "tcp" {
		a.URI = strings.Replace(a.URI, a.Address, l.Addr().String(), 1)
		a.Address = l.Addr().String()
	}
	return l, a, nil
}

func removeStaleSocket(ctx context.Context, path string) {
	st, err := os.Lstat(path)
	if err != nil || st.Mode().Type() != fs.ModeSocket {
		return
	}
	dctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	c, err := (&net.Dialer{}).DialContext(dctx, "unix", path)
	if err == nil {
		c.Close()
		return
	}
	os.Remove(path)
}

// ExportDevice serves a backup device over NBD: its extents become
// base:allocation block status, zero positions as holes that read as zeroes.
type ExportDevice struct{ Dev *BackupDevice }

// Size is the disk's size.
func (e ExportDevice) Size() int64 { return e.Dev.Size() }

// ReadAt fills p with the disk's bytes at off.
func (e ExportDevice) ReadAt(ctx context.Context, p []byte, off int64) error {
	return e.Dev.ReadAt(ctx, p, off)
}

// Lend lends the disk's bytes at off (BackupDevice.Lend).
func (e ExportDevice) Lend(ctx context.Context, off, n int64) ([][]byte, func(), error) {
	return e.Dev.Lend(ctx, off, n)
}

// LendUnit is the chunk size (BackupDevice.LendUnit).
func (e ExportDevice) LendUnit() int64 { return e.Dev.LendUnit() }

// Extents are the base:allocation states from off on, at most limit of them.
func (e ExportDevice) Extents(ctx context.Context, off, length int64, limit int) ([]nbdserver.Extent, error) {
	extents, err := e.Dev.Extents(ctx, off, length, limit)
	out := make([]nbdserver.Extent, len(extents))
	for i, x := range extents {
		out[i].Length = x.Length
		if x.Zero {
			out[i].Flags = nbdserver.StateHole | nbdserver.StateZero
		}
	}
	return out, err
}

// countedExport counts the bytes clients read, as a serve job's progress.
type countedExport struct {
	ExportDevice
	served *atomic.Int64
}

func (c countedExport) ReadAt(ctx context.Context, p []byte, off int64) error {
	err := c.ExportDevice.ReadAt(ctx, p, off)
	if err == nil {
		c.served.Add(int64(len(p)))
	}
	return err
}

func (c countedExport) Lend(ctx context.Context, off, n int64) ([][]byte, func(), error) {
	s, release, err := c.ExportDevice.Lend(ctx, off, n)
	if err == nil {
		c.served.Add(n)
	}
	return s, release, err
}

// ServeReport is what a serve job did.
type ServeReport struct {
	URI             string  `json:"uri"`
	BytesServed     int64   `json:"bytes_served"`
	DurationSeconds float64 `json:"duration_seconds"`
}

// serve serves backup m read-only at the job's listen address until its
// lifetime ends (the job completes) or ctx ends (it is cancelled or handed back).
// The export's URI is in the progress from the moment it accepts clients.
func (r *Runner) serve(ctx context.Context, repo *repository.Repository, m *repository.Manifest, s Spec, lim Limits, progress *Progress) (Result, error) {
	lifetime := r.maxServeLifetime()
	if s.Options.Lifetime != "" {
		lifetime, _ = time.ParseDuration(s.Options.Lifetime) // validated with the spec
	}
	// The device's cache and fetch buffers are held for the job's whole life.
	hold, err := lim.Memory.reserve(ctx, DefaultDeviceCache+2*int64(lim.concurrency())*m.ChunkSize)
	if err != nil {
		return Result{}, err
	}
	defer hold()
	addr, _ := ParseListen(s.Listen, "", false) // validated with the spec
	l, addr, err := addr.Listen(ctx)
	if err != nil {
		return Result{}, fmt.Errorf("serve: %w", err)
	}
	dev := countedExport{ExportDevice{NewBackupDevice(repo, m, WithDeviceConcurrency(lim.concurrency()))}, &progress.bytesDone}
	srv := nbdserver.New(dev, nbdserver.WithMaxConnections(16),
		nbdserver.WithPreferredBlockSize(uint32(min(m.ChunkSize, nbdserver.MaxRequest))),
		nbdserver.WithLogger(r.cfg.log.With(zap.String("job_id", s.ID), zap.String("backup", m.ID))))
	progress.setExport(addr.URI)
	r.cfg.log.Info("serving backup", zap.String("job_id", s.ID), zap.String("backup", m.ID), zap.String("uri", addr.URI),
		zap.Duration("lifetime", lifetime))
	started := time.Now()
	life, stop := context.WithTimeout(ctx, lifetime)
	defer stop()
	if err := srv.Serve(life, l); err != nil {
		return Result{}, fmt.Errorf("serve: %w", err)
	}
	if ctx.Err() != nil { // cancelled or handed back, not the lifetime's end
		return Result{}, context.Cause(ctx)
	}
	return Result{Serve: &ServeReport{URI: addr.URI, BytesServed: progress.bytesDone.Load(),
		DurationSeconds: time.Since(started).Seconds()}}, nil
}

// maxServeLifetime is the longest a serve job of this runner may serve, and how
// long one that names no lifetime serves.
func (r *Runner) maxServeLifetime() time.Duration {
	if r.cfg.policy == nil {
		return DefaultMaxServeLifetime
	}
	return cmp.Or(r.cfg.policy.cfg.MaxServeLifetime, DefaultMaxServeLifetime)
}
