package main

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"strings"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/blockferry/blockferry/internal/nbdserver"
	"github.com/blockferry/blockferry/jobs"
	"github.com/blockferry/blockferry/sinks/repository"
)

type serveFlags struct {
	backup, listen, name, cache, logLevel string
	concurrency, maxClients               int
}

func newServeCommand(g *globals) *cobra.Command {
	var f serveFlags
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve a backup as a read-only NBD export until interrupted (mount it, copy files out, boot from it)",
		Long: `Serve a backup as a read-only NBD export until interrupted. Reads fetch only
the chunks they touch, each checked against its id; a corrupt chunk is an I/O
error for the reads that touch it. Block status (base:allocation) reports the
backup's zero chunks as holes. Read-only exports advertise multi-conn.

To write to the disk (boot a VM from the backup), put a qcow2 overlay on the
export; writes land in the overlay, never in the repository:

  qemu-img create -f qcow2 -b 'nbd+unix:///?socket=/run/bf/vm1.sock' -F raw vm1.qcow2`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := required(cmd, "backup", "listen"); err != nil {
				return err
			}
			return runServe(cmd, g, f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.backup, "backup", "", "backup id to serve")
	fl.StringVar(&f.listen, "listen", "", "unix:///path/to.sock, or tcp://127.0.0.1:10809 (plain TCP: no TLS)")
	fl.StringVar(&f.name, "export-name", "", "export name (clients asking for the default export get it too)")
	fl.StringVar(&f.cache, "cache", "256MiB", "decoded chunks kept in memory between reads")
	fl.IntVar(&f.concurrency, "concurrency", 8, "chunks fetched at once")
	fl.IntVar(&f.maxClients, "max-clients", 16, "connections served at once")
	fl.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	return cmd
}

func runServe(cmd *cobra.Command, g *globals, f serveFlags) error {
	ctx := cmd.Context()
	cacheBytes, err := jobs.ParseByteSize(f.cache)
	if err != nil {
		return fmt.Errorf("--cache: %w", err)
	}
	log, err := newLogger(f.logLevel)
	if err != nil {
		return err
	}
	store, key, err := g.store(ctx)
	if err != nil {
		return err
	}
	repo, err := repository.Open(ctx, store, key)
	if err != nil {
		return err
	}
	m, err := repo.Manifest(ctx, f.backup)
	if err != nil {
		return err
	}
	network, address, uri, err := listenAddress(f.listen, f.name)
	if err != nil {
		return err
	}
	l, err := (&net.ListenConfig{}).Listen(ctx, network, address)
	if err != nil {
		return err
	}
	dev := jobs.NewBackupDevice(repo, m, jobs.WithDeviceCache(cacheBytes), jobs.WithDeviceConcurrency(f.concurrency))
	srv := nbdserver.New(exportDevice{dev}, nbdserver.WithExportName(f.name), nbdserver.WithMaxConnections(f.maxClients),
		nbdserver.WithPreferredBlockSize(uint32(min(m.ChunkSize, nbdserver.MaxRequest))),
		nbdserver.WithLogger(log.With(zap.String("backup", m.ID))))
	log.Info("serving backup", zap.String("backup", m.ID), zap.String("disk", m.Disk), zap.String("uri", uri),
		zap.Int64("size", m.Size), zap.Int64("cache_bytes", cacheBytes))
	if err := g.print(cmd.OutOrStdout(), map[string]any{"backup": m.ID, "disk": m.Disk, "size": m.Size, "uri": uri},
		fmt.Sprintf("serving backup %s of %s (%s) at %s\n", m.ID, m.Disk, bytesText(m.Size), uri)); err != nil {
		l.Close()
		return err
	}
	return srv.Serve(ctx, l)
}

// listenAddress parses --listen and returns what to listen on and the NBD URI
// clients connect to.
func listenAddress(listen, name string) (network, address, uri string, err error) {
	u, err := url.Parse(listen)
	if err != nil {
		return "", "", "", fmt.Errorf("--listen: %w", err)
	}
	exportPath := "/" + url.PathEscape(name)
	switch {
	case u.Scheme == "unix" && u.Host == "" && u.Path != "":
		socket := strings.ReplaceAll(url.QueryEscape(u.Path), "%2F", "/")
		return "unix", u.Path, "nbd+unix://" + exportPath + "?socket=" + socket, nil
	case u.Scheme == "tcp" && u.Host != "" && strings.Trim(u.Path, "/") == "":
		return "tcp", u.Host, "nbd://" + u.Host + exportPath, nil
	}
	return "", "", "", fmt.Errorf("--listen %q: want unix:///path/to.sock or tcp://host:port", listen)
}

// exportDevice serves a backup device over NBD: its extents become
// base:allocation block status, zero positions as holes that read as zeroes.
type exportDevice struct{ dev *jobs.BackupDevice }

func (e exportDevice) Size() int64 { return e.dev.Size() }

func (e exportDevice) ReadAt(ctx context.Context, p []byte, off int64) error {
	return e.dev.ReadAt(ctx, p, off)
}

func (e exportDevice) Extents(ctx context.Context, off, length int64) ([]nbdserver.Extent, error) {
	extents, err := e.dev.Extents(ctx, off, length)
	out := make([]nbdserver.Extent, len(extents))
	for i, x := range extents {
		out[i].Length = x.Length
		if x.Zero {
			out[i].Flags = nbdserver.StateHole | nbdserver.StateZero
		}
	}
	return out, err
}
