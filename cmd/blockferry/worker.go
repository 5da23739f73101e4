package main

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/blockferry/blockferry/backends"
	"github.com/blockferry/blockferry/jobs"
	"github.com/blockferry/blockferry/worker"
)

func defaultDataDir() string {
	if os.Geteuid() == 0 {
		return "/var/lib/blockferry"
	}
	if d, err := os.UserHomeDir(); err == nil {
		return filepath.Join(d, ".local", "share", "blockferry")
	}
	return "blockferry-data"
}

func newWorkerCommand(g *globals) *cobra.Command {
	var (
		n           natsFlags
		dataDir     string
		listen      string
		name        string
		slots       int
		concurrency int
		rateLimit   string
		grace       time.Duration
		logLevel    string
	)
	cmd := &cobra.Command{
		Use:   "worker",
		Short: "Run backup, restore and verify jobs from NATS JetStream (embedded NATS when --nats-url is not given)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(logLevel)
			if err != nil {
				return err
			}
			defer log.Sync()
			if name == "" {
				name, _ = os.Hostname()
			}
			if err := os.MkdirAll(dataDir, 0o750); err != nil {
				return fmt.Errorf("data directory: %w", err)
			}
			if n.conn.URLs == "" {
				srv, err := worker.StartEmbedded(dataDir, listen)
				if err != nil {
					return err
				}
				defer srv.Shutdown()
				n.conn.URLs = srv.ClientURL()
				log.Info("embedded NATS JetStream", zap.String("url", n.conn.URLs), zap.String("store", filepath.Join(dataDir, "nats")))
			}
			nc, js, err := n.connect("blockferry-worker-" + name)
			if err != nil {
				return err
			}
			defer nc.Close()
			repo := g.repository
			if repo == "" {
				repo = "file://" + filepath.Join(dataDir, "repository")
			}
			key, err := g.key()
			if err != nil {
				return err
			}
			var limiter = backends.NewLimiter(0)
			if rateLimit != "" {
				bps, err := jobs.ParseByteSize(rateLimit)
				if err != nil {
					return fmt.Errorf("--rate-limit: %w", err)
				}
				limiter = backends.NewLimiter(bps)
			}
			runner := jobs.NewRunner(jobs.WithDefaultRepository(repo), jobs.WithKey(key), jobs.WithConcurrency(concurrency),
				jobs.WithRateLimiter(limiter), jobs.WithLogger(log))
			w := worker.New(js, runner, worker.WithTopology(n.topo), worker.WithName(name), worker.WithJobs(slots),
				worker.WithGracePeriod(grace), worker.WithLogger(log))
			log.Info("worker configuration", zap.String("repository", redactURI(repo)), zap.Int("jobs", slots), zap.String("worker", name))
			return w.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	n.register(f, "")
	f.StringVar(&dataDir, "data-dir", envOr("BLOCKFERRY_DATA_DIR", defaultDataDir()), "data directory: embedded NATS store and the default file repository")
	f.StringVar(&listen, "listen", envOr("BLOCKFERRY_LISTEN", worker.DefaultEmbeddedListen), "address of the embedded NATS server")
	f.StringVar(&name, "name", os.Getenv("BLOCKFERRY_WORKER_NAME"), "worker name in events and logs (default: host name)")
	f.IntVar(&slots, "jobs", 1, "jobs run at once")
	f.IntVar(&concurrency, "concurrency", 8, "chunks in flight per job")
	f.StringVar(&rateLimit, "rate-limit", os.Getenv("BLOCKFERRY_RATE_LIMIT"), "cap on source reads of all jobs together, e.g. 400MiB (per second)")
	f.DurationVar(&grace, "grace-period", 5*time.Minute, "on SIGTERM, how long running jobs may finish before they are handed back")
	f.IntVar(&n.topo.Replicas, "replicas", 1, "replicas of the streams and buckets the worker creates (3 on a cluster)")
	f.DurationVar(&n.topo.AckWait, "ack-wait", n.topo.AckWait, "redeliver a job whose worker sent no heartbeat for this long")
	f.IntVar(&n.topo.MaxDeliver, "max-deliver", n.topo.MaxDeliver, "attempts of a job before it fails")
	f.DurationSliceVar(&n.topo.Backoff, "backoff", n.topo.Backoff, "delays before the retries of a job that failed transiently")
	f.DurationVar(&n.topo.EventsMaxAge, "events-max-age", n.topo.EventsMaxAge, "how long events and job status are kept")
	f.StringVar(&logLevel, "log-level", envOr("BLOCKFERRY_LOG_LEVEL", "info"), "debug, info, warn or error")
	return cmd
}

func newLogger(level string) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	cfg := zap.NewProductionConfig()
	cfg.Level = zap.NewAtomicLevelAt(lvl)
	cfg.EncoderConfig.TimeKey = "time"
	cfg.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	return cfg.Build()
}
