package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/blockferry/blockferry/backends"
	"github.com/blockferry/blockferry/internal/metrics"
	"github.com/blockferry/blockferry/jobs"
	"github.com/blockferry/blockferry/sinks"
	"github.com/blockferry/blockferry/worker"
	"github.com/blockferry/blockferry/worker/embedded"
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

// workerCommand is `blockferry worker`: its flags, and the steps of its run.
type workerCommand struct {
	g           *globals
	n           natsFlags
	dataDir     string
	listen      string
	name        string
	slots       int
	concurrency int
	rateLimit   jobs.ByteSize
	memoryLimit jobs.ByteSize
	grace       time.Duration
	logLevel    string
	httpAddr    string
	pol         policyFlags
}

func newWorkerCommand(g *globals) *cobra.Command {
	wc := &workerCommand{g: g}
	cmd := &cobra.Command{
		Use:   "worker",
		Short: "Run backup, restore and verify jobs from NATS JetStream (embedded NATS when --nats-url is not given)",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return wc.run(cmd.Context()) },
	}
	wc.register(cmd)
	return cmd
}

func (wc *workerCommand) register(cmd *cobra.Command) {
	f := cmd.Flags()
	n := &wc.n
	n.register(f, "")
	f.StringVar(&wc.dataDir, "data-dir", defaultDataDir(), "data directory: embedded NATS store and the default file repository")
	f.StringVar(&wc.listen, "listen", embedded.DefaultListen, "address of the embedded NATS server")
	f.StringVar(&wc.name, "name", "", "worker name in events and logs (default: host name)")
	f.IntVar(&wc.slots, "jobs", 1, "jobs run at once")
	f.IntVar(&wc.concurrency, "concurrency", jobs.DefaultConcurrency, "chunks in flight per job")
	f.Var(&wc.rateLimit, "rate-limit", "cap on source reads of all jobs together, e.g. 400MiB (per second)")
	f.Var(&wc.memoryLimit, "memory-limit", fmt.Sprintf("bound on the chunk buffers of all running jobs together, e.g. 512MiB; "+
		"jobs wait for buffers rather than exceed it (default: %s per --jobs)", jobs.ByteSize(jobs.DefaultMemoryPerJob)))
	f.DurationVar(&wc.grace, "grace-period", 5*time.Minute, "on SIGTERM, how long running jobs may finish before they are handed back")
	f.IntVar(&n.topo.Replicas, "replicas", 1, "replicas of the streams and buckets the worker creates (3 on a cluster)")
	f.DurationVar(&n.topo.AckWait, "ack-wait", n.topo.AckWait, "redeliver a job whose worker sent no heartbeat for this long")
	f.IntVar(&n.topo.MaxDeliver, "max-deliver", n.topo.MaxDeliver, "attempts of a job before it fails")
	f.DurationSliceVar(&n.topo.Backoff, "backoff", n.topo.Backoff, "delays before the retries of a job that failed transiently")
	f.DurationVar(&n.topo.EventsMaxAge, "events-max-age", n.topo.EventsMaxAge, "how long events and job status are kept")
	f.StringVar(&wc.logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&wc.httpAddr, "http", "", "address for /metrics, /healthz and /readyz, e.g. 0.0.0.0:9090 (off when empty)")
	settings(f)
	wc.pol.register(f)
}

// run starts NATS (embedded unless --nats-url), the job runner, the worker and
// its HTTP endpoints, and takes jobs until ctx ends and the worker has drained.
func (wc *workerCommand) run(ctx context.Context) error {
	log, err := newLogger(wc.logLevel)
	if err != nil {
		return err
	}
	defer log.Sync()
	if wc.name == "" {
		wc.name, _ = os.Hostname()
	}
	if err := os.MkdirAll(wc.dataDir, 0o750); err != nil {
		return fmt.Errorf("data directory: %w", err)
	}
	if wc.n.conn.URLs == "" {
		srv, err := embedded.Start(wc.dataDir, wc.listen)
		if err != nil {
			return err
		}
		defer srv.Shutdown()
		wc.n.conn.URLs = srv.ClientURL()
		wc.n.tokenFile = embedded.TokenFile(wc.dataDir)
		log.Info("embedded NATS JetStream", zap.String("url", wc.n.conn.URLs), zap.String("store", filepath.Join(wc.dataDir, "nats")))
	}
	nc, js, err := wc.n.connect("blockferry-worker-" + wc.name)
	if err != nil {
		return err
	}
	defer nc.Close()
	repo := wc.g.repository
	if repo == "" {
		repo = "file://" + filepath.Join(wc.dataDir, "repository")
	}
	runner, budget, m, err := wc.newRunner(log, repo)
	if err != nil {
		return err
	}
	w, err := worker.New(js, runner, worker.WithTopology(wc.n.topo), worker.WithName(wc.name), worker.WithJobs(wc.slots),
		worker.WithGracePeriod(wc.grace), worker.WithLogger(log), worker.WithMetrics(m))
	if err != nil {
		return err
	}
	if wc.httpAddr != "" {
		// Served until the worker has drained, not until the signal: metrics and
		// health stay visible while running jobs finish (/readyz says 503).
		httpCtx, stopHTTP := context.WithCancel(context.WithoutCancel(ctx))
		defer stopHTTP()
		if err := wc.serveHTTP(httpCtx, log, repo, workerChecks{nc: nc, js: js, topo: wc.n.topo, w: w}, m); err != nil {
			return err
		}
	}
	log.Info("worker configuration", zap.String("repository", redactURI(repo)), zap.Int("jobs", wc.slots), zap.String("worker", wc.name),
		zap.Int64("memory_limit", budget.Size()))
	return w.Run(ctx)
}

// newRunner makes the job runner from the flags, the settings file and the key.
func (wc *workerCommand) newRunner(log *zap.Logger, repo string) (*jobs.Runner, *jobs.MemoryBudget, *metrics.Metrics, error) {
	key, err := wc.g.key()
	if err != nil {
		return nil, nil, nil, err
	}
	policy, err := wc.pol.policy(wc.g.configFile, repo, key)
	if err != nil {
		return nil, nil, nil, err
	}
	tls, err := wc.g.nbdTLS.tls()
	if err != nil {
		return nil, nil, nil, err
	}
	budget, err := memoryBudget(wc.memoryLimit, wc.slots)
	if err != nil {
		return nil, nil, nil, err
	}
	m := metrics.New()
	runner := jobs.NewRunner(jobs.WithDefaultRepository(repo), jobs.WithKey(key), jobs.WithConcurrency(wc.concurrency),
		jobs.WithRateLimiter(backends.NewLimiter(int64(wc.rateLimit))), // 0: no limit
		jobs.WithLogger(log), jobs.WithObservers(m.ObserveSource, m.ObserveStore),
		jobs.WithFallbackObserver(m.BackupFallback), jobs.WithPruneObserver(m.ObservePrune),
		jobs.WithResume(), jobs.WithMemoryBudget(budget), jobs.WithPolicy(policy), jobs.WithDeviceTLS(tls))
	return runner, budget, m, nil
}

// workerChecks are what /readyz asks of a worker besides its repository.
type workerChecks struct {
	nc   *nats.Conn
	js   jetstream.JetStream
	topo worker.Topology
	w    *worker.Worker
}

// serveHTTP serves /metrics, /healthz and /readyz until ctx ends.
func (wc *workerCommand) serveHTTP(ctx context.Context, log *zap.Logger, repo string, c workerChecks, m *metrics.Metrics) error {
	store, err := sinks.OpenStore(ctx, repo)
	if err != nil {
		return err
	}
	checks := map[string]metrics.Check{
		"nats": func(context.Context) error {
			if !c.nc.IsConnected() {
				return fmt.Errorf("not connected (%s)", c.nc.Status())
			}
			return nil
		},
		"streams": func(ctx context.Context) error {
			_, err := c.js.Stream(ctx, c.topo.JobsStream)
			return err
		},
		"repository": repositoryReadiness(store),
		"worker": func(context.Context) error {
			if !c.w.Ready() {
				return fmt.Errorf("not taking jobs")
			}
			return nil
		},
	}
	addr, _, err := metrics.Serve(ctx, wc.httpAddr, metrics.Handler(m, checks))
	if err != nil {
		return fmt.Errorf("--http: %w", err)
	}
	log.Info("serving /metrics, /healthz and /readyz", zap.String("address", addr))
	return nil
}

// memoryBudget makes the worker's buffer budget from --memory-limit, and tells
// the Go runtime to collect garbage before its heap outgrows the budget by more
// than 128 MiB, the room for everything else (NATS and an embedded server, the
// manifests of the jobs, about 100 bytes per chunk position each, metrics),
// unless GOMEMLIMIT says otherwise. The process adds its code and the C
// libraries' memory (zstd contexts, libnbd): docs/PERFORMANCE.md states its peak
// RSS as the budget plus 192 MiB.
func memoryBudget(limit jobs.ByteSize, slots int) (*jobs.MemoryBudget, error) {
	size := int64(max(slots, 1)) * jobs.DefaultMemoryPerJob
	if limit != 0 {
		if size = int64(limit); size < 16<<20 {
			return nil, fmt.Errorf("--memory-limit: %s is less than 16MiB", limit)
		}
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(size + 128<<20)
	}
	return jobs.NewMemoryBudget(size), nil
}

// repositoryReadiness is /readyz's check of the repository's store. A store that
// can check itself as a whole does (S3: HeadBucket, then a one-key listing): on S3
// a HEAD of the config object answers a missing bucket or an unknown access key
// with a bodiless 404, which reads as "no config yet" and would leave the worker
// ready. Other stores are asked whether the config object exists.
func repositoryReadiness(store sinks.Store) metrics.Check {
	if c, ok := store.(interface{ Check(context.Context) error }); ok {
		return c.Check
	}
	return func(ctx context.Context) error {
		_, err := store.Exists(ctx, "config")
		return err
	}
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
