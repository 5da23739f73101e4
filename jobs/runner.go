package jobs

import (
	"cmp"
	"context"
	"fmt"
	"time"

	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/blockferry/blockferry/backends"
	"github.com/blockferry/blockferry/sinks"
	"github.com/blockferry/blockferry/sinks/repository"
)

// Result is the outcome of a job that succeeded; one field is set, by kind.
type Result struct {
	Backup  *repository.Manifest `json:"backup,omitempty"`
	Restore *RestoreStats        `json:"restore,omitempty"`
	Verify  *VerifyReport        `json:"verify,omitempty"`
	Prune   *PruneResult         `json:"prune,omitempty"`
	Serve   *ServeReport         `json:"serve,omitempty"`
}

// Runner runs jobs: it opens what a spec names and hands it to the engine. The
// command line and the queue worker both run jobs through it.
//
// A Runner trusts the specs it is given: they passed Spec.Validate at the
// boundary they crossed (DecodeSpec in the worker, Client.Submit, the command
// line), so ids, names, options and the combination of fields are sound and the
// fields a kind needs are there. The defaults of what a spec leaves unset are
// applied here (defaults.go). What the engine still checks is what only it can
// see: that some repository is named (the runner's default counts), and, in
// Backup, that the parent is a backup of the same disk at the same size.
type Runner struct {
	cfg runnerConfig
}

type runnerConfig struct {
	repository  string
	key         []byte
	concurrency int
	memory      *MemoryBudget
	limiter     *rate.Limiter
	log         *zap.Logger
	onSource    backends.SourceObserver
	onStore     sinks.StoreObserver
	onPrune     PruneObserver
	resume      bool
	policy      *Policy
	onFallback  func(reason string)
	tls         backends.TLS
}

// WithDeviceTLS authenticates the sources and targets reached over TLS
// (nbds://, nbds+unix://): jobs name devices, the worker holds the credentials.
func WithDeviceTLS(t backends.TLS) RunnerOption { return func(c *runnerConfig) { c.tls = t } }

// WithResume makes backups keep a checkpoint under their job id, so that a retry
// of the job resumes. Queue workers want it; a one-off command line backup, whose
// job id is never seen again, does not.
func WithResume() RunnerOption { return func(c *runnerConfig) { c.resume = true } }

// WithObservers reports every source and store request, for metrics.
func WithObservers(src backends.SourceObserver, store sinks.StoreObserver) RunnerOption {
	return func(c *runnerConfig) { c.onSource, c.onStore = src, store }
}

// RunnerOption configures a Runner.
type RunnerOption func(*runnerConfig)

// WithDefaultRepository is used by jobs that name no repository.
func WithDefaultRepository(uri string) RunnerOption {
	return func(c *runnerConfig) { c.repository = uri }
}

// WithKey is the encryption key material: it opens encrypted repositories, and a
// repository created by a backup is encrypted with it.
func WithKey(key []byte) RunnerOption { return func(c *runnerConfig) { c.key = key } }

// WithConcurrency is the number of chunks in flight of the jobs that do not say;
// DefaultConcurrency without it.
func WithConcurrency(n int) RunnerOption { return func(c *runnerConfig) { c.concurrency = n } }

// WithMemoryBudget makes every job of the runner take its chunk buffers out of b,
// so that jobs running at once together stay within it.
func WithMemoryBudget(b *MemoryBudget) RunnerOption { return func(c *runnerConfig) { c.memory = b } }

// WithRateLimiter caps the source reads of all jobs of this runner together.
func WithRateLimiter(l *rate.Limiter) RunnerOption {
	return func(c *runnerConfig) { c.limiter = l }
}

// WithLogger receives what jobs do on their own account: a backup resuming an
// earlier attempt of its job, checkpoints that could not be written or deleted.
// Outcomes are the caller's to report: Run returns them.
func WithLogger(l *zap.Logger) RunnerOption { return func(c *runnerConfig) { c.log = l } }

// NewRunner makes a runner.
func NewRunner(opts ...RunnerOption) *Runner {
	c := runnerConfig{concurrency: DefaultConcurrency, log: zap.NewNop(), onFallback: func(string) {}}
	for _, o := range opts {
		o(&c)
	}
	return &Runner{cfg: c}
}

// RunOption qualifies one run of a job.
type RunOption func(*runOptions)

type runOptions struct{ message string }

// FromMessage names the job message a run is of (a worker passes its stream
// sequence): a backup resumes only a checkpoint the same message wrote, never one
// of an earlier job that used the same id.
func FromMessage(id string) RunOption { return func(o *runOptions) { o.message = id } }

// Run runs one job, which must be valid (Spec.Validate). progress may be nil.
func (r *Runner) Run(ctx context.Context, s Spec, progress *Progress, opts ...RunOption) (Result, error) {
	var o runOptions
	for _, opt := range opts {
		opt(&o)
	}
	if progress == nil {
		progress = NewProgress()
	}
	r, s, repoURI, err := r.forJob(s)
	if err != nil {
		return Result{}, err
	}
	store, err := sinks.OpenStore(ctx, repoURI)
	if err != nil {
		return Result{}, err
	}
	store = sinks.Instrumented(store, r.cfg.onStore)
	lim := Limits{Concurrency: cmp.Or(s.Options.Concurrency, r.cfg.concurrency), Memory: r.cfg.memory}
	switch s.Kind {
	case KindBackup:
		return r.backup(ctx, store, s, lim, o, progress)
	case KindPrune:
		return r.prune(ctx, store, s, progress)
	case KindRestore, KindVerify, KindServe:
		repo, err := repository.Open(ctx, store, r.cfg.key)
		if err != nil {
			return Result{}, err
		}
		if len(r.cfg.key) > 0 && !repo.Encrypted() {
			// Backups the worker wrote are encrypted: an unencrypted repository
			// under its name is not one it wrote to.
			return Result{}, fmt.Errorf("%s: %w: the repository is not encrypted but a key is configured; refusing to read it", repo.Location(), repository.ErrWrongKey)
		}
		m, err := repo.Manifest(ctx, s.Backup)
		if err != nil {
			return Result{}, err
		}
		if s.Kind == KindServe {
			return r.serve(ctx, repo, m, s, lim, progress)
		}
		if s.Kind == KindVerify {
			var src backends.Source
			if s.Source != nil { // also compare the backup with the disk
				if src, err = r.openSource(ctx, s.Source); err != nil {
					return Result{}, err
				}
				defer src.Close()
			}
			rep, err := Verify(ctx, repo, m, src, lim, progress)
			return Result{Verify: &rep}, err
		}
		tgt, err := backends.OpenTarget(ctx, s.Target.URI, backends.WithSize(m.Size), backends.WithTargetConnections(DefaultConnections),
			backends.WithTargetTLS(r.cfg.tls))
		if err != nil {
			return Result{}, err
		}
		st, err := Restore(ctx, repo, m, tgt, lim, progress)
		if cerr := tgt.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("close target: %w", cerr)
		}
		if err != nil {
			return Result{}, err
		}
		return Result{Restore: &st}, nil
	}
	return Result{}, fmt.Errorf("%w: unknown kind %q", ErrInvalid, s.Kind)
}

func (r *Runner) backup(ctx context.Context, store sinks.Store, s Spec, lim Limits, o runOptions, progress *Progress) (Result, error) {
	repo, err := repository.OpenOrInit(ctx, store, repository.InitOptions{Key: r.cfg.key,
		ChunkSize: int64(cmp.Or(s.Options.ChunkSize, DefaultChunkSize)), Compression: cmp.Or(s.Options.Compression, DefaultCompression)})
	if err != nil {
		return Result{}, err
	}
	if len(r.cfg.key) > 0 && !repo.Encrypted() {
		// An operator who configured a key expects encrypted backups.
		return Result{}, fmt.Errorf("%s: %w: the repository is not encrypted but a key is configured; refusing to write unencrypted backups", repo.Location(), repository.ErrWrongKey)
	}
	chain, err := r.startChain(ctx, repo, s)
	if err != nil {
		return Result{}, err
	}
	src, parent := chain.src, chain.parent
	defer src.Close()
	if err := checkSourceSize(src, s.Source.URI, repo, int64(s.Options.ChunkSize), parent); err != nil {
		return Result{}, err
	}
	src = backends.RateLimited(src, r.cfg.limiter)
	if s.Options.RateLimit != "" {
		bps, _ := ParseByteSize(s.Options.RateLimit) // validated with the spec
		src = backends.RateLimited(src, backends.NewLimiter(bps))
	}
	m, err := Backup(ctx, repo, src, BackupParams{
		JobID: s.ID, Message: o.message, Resume: r.cfg.resume, Source: s.Source.URI, Disk: s.Disk, Bitmap: s.Source.Bitmap, Parent: parent, Labels: s.Labels,
		Checkpoint: s.Checkpoint, FallbackReason: chain.fallback,
		ChunkSize: cmp.Or(int64(s.Options.ChunkSize), chain.chunkSize), Limits: lim, Log: r.cfg.log,
		Compress: s.Options.Compression != "none" && (s.Options.Compression == "zstd" || repo.Config().Compression == "zstd"),
	}, progress)
	if err != nil {
		return Result{}, err
	}
	if m.FallbackReason != "" {
		r.cfg.onFallback(m.FallbackReason)
	}
	return Result{Backup: m}, nil
}

// openSource opens the device e names, with its bitmap, reports its requests to
// the runner's observer and sends a request that failed transiently again, so
// that an I/O error that passes costs a request, not the attempt.
func (r *Runner) openSource(ctx context.Context, e *Endpoint) (backends.Source, error) {
	src, err := backends.OpenSource(ctx, e.URI, backends.WithBitmap(e.Bitmap),
		backends.WithConnections(DefaultConnections), backends.WithMaxInFlight(DefaultMaxInFlight), backends.WithTLS(r.cfg.tls))
	if err != nil {
		return nil, err
	}
	// Every request is observed, also the ones a retry repeats.
	src = backends.Instrumented(src, r.cfg.onSource)
	return backends.Retrying(src, transient, backends.WithRetryNotify(func(op string, attempt int, wait time.Duration, err error) {
		r.cfg.log.Warn("source request failed, retrying", zap.String("source", e.URI), zap.String("op", op),
			zap.Int("try", attempt), zap.Duration("wait", wait), zap.Error(err))
	})), nil
}
