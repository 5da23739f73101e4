package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/blockferry/blockferry/internal/nbdserver"
	"github.com/blockferry/blockferry/internal/overlay"
	"github.com/blockferry/blockferry/jobs"
	"github.com/blockferry/blockferry/sinks/repository"
)

type serveFlags struct {
	backup, listen, name, logLevel, overlay string
	tlsCert, tlsKey, tlsClientCA            string
	cache                                   jobs.ByteSize
	concurrency, maxClients, readAhead      int
	idleTimeout                             time.Duration
	writable                                bool
}

func newServeCommand(g *globals) *cobra.Command {
	f := serveFlags{cache: jobs.DefaultDeviceCache, idleTimeout: nbdserver.DefaultIdleTimeout}
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve a backup over NBD until interrupted, read-only or writable into a local overlay (mount it, copy files out, boot from it)",
		Long: `Serve a backup as an NBD export until interrupted. Reads fetch only
the chunks they touch, each checked against its id; a corrupt chunk is an I/O
error for the reads that touch it. Block status (base:allocation) reports the
backup's zero chunks as holes. Read-only exports advertise multi-conn.

With --writable, writes go to a local overlay (--overlay FILE: a sparse raw
image FILE and its block map FILE.map, kept across runs; without it a temporary
one removed at exit), never to the repository. Or put a qcow2 overlay on a
read-only export; writes land in the qcow2 file:

  qemu-img create -f qcow2 -b 'nbd+unix:///?socket=/run/bf/vm1.sock' -F raw vm1.qcow2

With --tls-cert and --tls-key, clients must start TLS before anything else
(nbds:// URIs); serve plain NBD only on a Unix socket or loopback. With
--tls-client-ca too, clients must also present a certificate signed by a CA in
that PEM file (libnbd: client-cert.pem and client-key.pem in the
tls-certificates directory); others are refused during the TLS handshake.`,
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
	fl.StringVar(&f.listen, "listen", "", "unix:///path/to.sock, or tcp://127.0.0.1:10809")
	fl.StringVar(&f.tlsCert, "tls-cert", "", "PEM certificate (chain) of the server: clients must then use TLS (nbds://)")
	fl.StringVar(&f.tlsKey, "tls-key", "", "PEM private key of --tls-cert")
	fl.StringVar(&f.tlsClientCA, "tls-client-ca", "", "PEM file of the CA certificates that sign clients' certificates: clients must then present one (needs --tls-cert)")
	fl.StringVar(&f.name, "export-name", "", "export name (clients asking for the default export get it too)")
	fl.Var(&f.cache, "cache", "decoded chunks kept in memory between reads (more helps random readers, such as a booted VM, over S3)")
	fl.IntVar(&f.concurrency, "concurrency", 8, "chunks fetched at once")
	fl.IntVar(&f.readAhead, "read-ahead", 8, "chunks fetched ahead of a sequential reader (at most half the cache; 0: none)")
	fl.IntVar(&f.maxClients, "max-clients", 16, "connections served at once")
	fl.DurationVar(&f.idleTimeout, "idle-timeout", f.idleTimeout, "close a connection that sends no request for this long while none of its requests is in progress (0: never)")
	fl.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fl.BoolVar(&f.writable, "writable", false, "accept writes, into a local overlay (never into the repository)")
	fl.StringVar(&f.overlay, "overlay", "", "overlay file for --writable (kept, with FILE.map; reopened if it exists)")
	return cmd
}

func runServe(cmd *cobra.Command, g *globals, f serveFlags) error {
	ctx := cmd.Context()
	cacheBytes := int64(f.cache)
	if f.idleTimeout < 0 {
		return fmt.Errorf("--idle-timeout %v: want 0 (never) or a duration", f.idleTimeout)
	}
	log, err := newLogger(f.logLevel)
	if err != nil {
		return err
	}
	tlsConfig, err := serveTLS(f.tlsCert, f.tlsKey, f.tlsClientCA)
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
	if f.overlay != "" && !f.writable {
		return fmt.Errorf("--overlay needs --writable")
	}
	var dev nbdserver.Device = jobs.ExportDevice{Dev: jobs.NewBackupDevice(repo, m, jobs.WithDeviceCache(cacheBytes), jobs.WithDeviceConcurrency(f.concurrency),
		jobs.WithDeviceReadAhead(f.readAhead))}
	if f.writable {
		ov, err := openOverlay(f.overlay, m.ID, dev)
		if err != nil {
			return err
		}
		defer func() {
			if cerr := ov.Close(); cerr != nil {
				log.Error("closing the overlay", zap.Error(cerr))
			}
		}()
		dev = ov
	}
	opts := []nbdserver.Option{nbdserver.WithExportName(f.name), nbdserver.WithMaxConnections(f.maxClients),
		nbdserver.WithIdleTimeout(f.idleTimeout),
		nbdserver.WithPreferredBlockSize(uint32(min(m.ChunkSize, nbdserver.MaxRequest))),
		nbdserver.WithLogger(log.With(zap.String("backup", m.ID)))}
	if tlsConfig != nil {
		opts = append(opts, nbdserver.WithTLS(tlsConfig))
	}
	addr, err := jobs.ParseListen(f.listen, f.name, tlsConfig != nil)
	if err != nil {
		return fmt.Errorf("--%w", err)
	}
	l, addr, err := addr.Listen(ctx)
	if err != nil {
		return err
	}
	uri := addr.URI
	srv := nbdserver.New(dev, opts...)
	log.Info("serving backup", zap.String("backup", m.ID), zap.String("disk", m.Disk), zap.String("uri", uri),
		zap.Int64("size", m.Size), zap.Int64("cache_bytes", cacheBytes))
	if err := g.print(cmd.OutOrStdout(), map[string]any{"backup": m.ID, "disk": m.Disk, "size": m.Size, "uri": uri, "writable": f.writable},
		fmt.Sprintf("serving backup %s of %s (%s) at %s\n", m.ID, m.Disk, bytesText(m.Size), uri)); err != nil {
		l.Close()
		return err
	}
	return srv.Serve(ctx, l)
}

// serveTLS is the TLS configuration of the export: nil without a certificate;
// with clientCA, clients must present a certificate that one of its CA
// certificates signed.
func serveTLS(certFile, keyFile, clientCA string) (*tls.Config, error) {
	if certFile == "" && keyFile == "" {
		if clientCA != "" {
			return nil, errors.New("--tls-client-ca needs --tls-cert and --tls-key")
		}
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("--tls-cert/--tls-key: %w", err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if clientCA == "" {
		return cfg, nil
	}
	pemData, err := os.ReadFile(clientCA)
	if err != nil {
		return nil, fmt.Errorf("--tls-client-ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemData) {
		return nil, fmt.Errorf("--tls-client-ca %s: no PEM certificate in it", clientCA)
	}
	cfg.ClientCAs, cfg.ClientAuth = pool, tls.RequireAndVerifyClientCert
	return cfg, nil
}

// overlayCloser is an overlay and how to dispose of it at exit.
type overlayCloser struct {
	*overlay.Overlay
	remove string // a temporary overlay's directory
}

func (o overlayCloser) Close() error {
	err := o.Overlay.Close()
	if o.remove != "" {
		err = errors.Join(err, os.RemoveAll(o.remove))
	}
	return err
}

// openOverlay opens the overlay at path, or a temporary one when path is empty.
func openOverlay(path, backup string, base nbdserver.Device) (overlayCloser, error) {
	var tmp string
	if path == "" {
		var err error
		if tmp, err = os.MkdirTemp("", "blockferry-overlay-"); err != nil {
			return overlayCloser{}, err
		}
		path = filepath.Join(tmp, backup+".overlay")
	}
	ov, err := overlay.Open(path, backup, base)
	if err != nil {
		if tmp != "" {
			os.RemoveAll(tmp)
		}
		return overlayCloser{}, err
	}
	return overlayCloser{Overlay: ov, remove: tmp}, nil
}
