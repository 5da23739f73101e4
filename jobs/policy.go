package jobs

import (
	"cmp"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"sort"
	"time"
)

// ErrForbidden: the worker's policy does not let a job use what it names. Nothing
// was opened or created.
var ErrForbidden = errors.New("forbidden by the worker's policy")

// NamedRepository is a repository of the worker's table: jobs name it, and never
// carry its URI, credentials or key.
type NamedRepository struct {
	// URI of the store; S3 credentials come from the profile or credentials
	// file it names (profile=…, credentials_file=…) or the worker's environment.
	URI string
	// Key is the repository's encryption key: a backup into a repository that
	// is not encrypted with it, or a restore from one, is refused.
	Key []byte
}

// PolicyConfig is what the operator allows jobs of a queue to touch.
type PolicyConfig struct {
	// Repositories by name.
	Repositories map[string]NamedRepository
	// DefaultRepository names the repository of jobs that name none.
	DefaultRepository string
	// RepositoryURIs lets jobs name a repository by URI (single-user set-ups,
	// where whoever publishes jobs is the operator); such a repository uses URIKey.
	RepositoryURIs bool
	URIKey         []byte
	// Sources and Targets are allow-lists of URI patterns (see AllowPattern);
	// nil takes DefaultAllow.
	Sources, Targets []string
	// PruneJobs lets jobs forget backups and collect garbage. Off by default: a
	// prune job deletes backups, which no other kind of job can.
	PruneJobs bool
	// Listens is the allow-list of the addresses serve jobs may listen on (see
	// splitListen); nil or empty: serve jobs are refused.
	Listens []string
	// MaxServeLifetime bounds how long a serve job serves, and is the lifetime
	// of one that names none (0: DefaultMaxServeLifetime).
	MaxServeLifetime time.Duration
}

// DefaultAllow is the allow-list of sources and of targets when the operator
// gives none: NBD exports on Unix sockets, which only local processes that may
// create sockets can offer. No file and no NBD host on the network.
var DefaultAllow = []string{"nbd+unix:///*?socket=/**", "nbds+unix:///*?socket=/**"}

// Policy decides what a job may touch, before anything is opened.
type Policy struct {
	cfg              PolicyConfig
	sources, targets []uriPattern
	listens          []uriPattern
}

var repositoryName = regexp.MustCompile(`^[0-9A-Za-z][0-9A-Za-z._-]{0,127}$`)

// NewPolicy checks c and compiles its patterns.
func NewPolicy(c PolicyConfig) (*Policy, error) {
	for name := range c.Repositories {
		if !repositoryName.MatchString(name) {
			return nil, fmt.Errorf("repository name %q: want letters, digits and . _ -", name)
		}
	}
	if _, ok := c.Repositories[c.DefaultRepository]; c.DefaultRepository != "" && !ok {
		return nil, fmt.Errorf("default repository %q is not in the table (have %v)", c.DefaultRepository, names(c.Repositories))
	}
	p := &Policy{cfg: c}
	var err error
	if p.sources, err = compilePatterns(c.Sources); err != nil {
		return nil, fmt.Errorf("allowed sources: %w", err)
	}
	if p.targets, err = compilePatterns(c.Targets); err != nil {
		return nil, fmt.Errorf("allowed targets: %w", err)
	}
	if p.listens, err = compileListenPatterns(c.Listens); err != nil {
		return nil, fmt.Errorf("allowed serve listen addresses: %w", err)
	}
	if p.cfg.MaxServeLifetime < 0 {
		return nil, fmt.Errorf("maximum serve lifetime %s is negative", c.MaxServeLifetime)
	}
	return p, nil
}

func compilePatterns(list []string) ([]uriPattern, error) {
	if list == nil {
		list = DefaultAllow
	}
	out := make([]uriPattern, 0, len(list))
	for _, s := range list {
		pat, err := parsePattern(s)
		if err != nil {
			return nil, err
		}
		out = append(out, pat)
	}
	return out, nil
}

func names(m map[string]NamedRepository) []string {
	out := make([]string, 0, len(m))
	for n := range m {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// grant is what a policy lets one job use: the repository's URI and key, and
// the job with its source and target URIs replaced by their checked, normalised
// forms, which are what gets opened.
type grant struct {
	repository string
	key        []byte
	spec       Spec
}

// admit checks a job against the policy. Its errors wrap ErrForbidden (or
// ErrInvalid) and quote the job's values only in short, escaped form.
func (p *Policy) admit(s Spec) (grant, error) {
	g := grant{spec: s}
	var err error
	if g.repository, g.key, err = p.repository(s.Repository); err != nil {
		return grant{}, fmt.Errorf("job %s: %w", s.ID, err)
	}
	if s.Source != nil {
		if s.Source.Overwrite {
			return grant{}, fmt.Errorf("%w: job %s: overwrite belongs to a restore target", ErrInvalid, s.ID)
		}
		src := *s.Source
		if src.URI, err = admitSource(p.sources, s.Source.URI); err != nil {
			return grant{}, fmt.Errorf("job %s: source %s: %w", s.ID, quoteShort(s.Source.URI), err)
		}
		g.spec.Source = &src
	}
	if s.Target != nil {
		tgt := *s.Target
		if tgt.URI, err = admitTarget(p.targets, s.Target.URI, s.Target.Overwrite); err != nil {
			return grant{}, fmt.Errorf("job %s: target %s: %w", s.ID, quoteShort(s.Target.URI), err)
		}
		g.spec.Target = &tgt
	}
	if s.Kind == KindPrune && !p.cfg.PruneJobs {
		return grant{}, fmt.Errorf("%w: job %s: prune jobs delete backups, and the worker's policy does not allow them (--allow-prune-jobs)", ErrForbidden, s.ID)
	}
	if s.Listen != "" {
		if g.spec.Listen, err = admitListen(p.listens, s.Listen); err != nil {
			return grant{}, fmt.Errorf("job %s: listen %s: %w", s.ID, quoteShort(s.Listen), err)
		}
	}
	if d, _ := time.ParseDuration(s.Options.Lifetime); d > cmp.Or(p.cfg.MaxServeLifetime, DefaultMaxServeLifetime) {
		return grant{}, fmt.Errorf("job %s: %w: lifetime %s is beyond the worker's maximum, %s", s.ID, ErrForbidden,
			d, cmp.Or(p.cfg.MaxServeLifetime, DefaultMaxServeLifetime))
	}
	return g, nil
}

// repository resolves what a job says in "repository": a name from the table,
// nothing for the default, or (when the operator allows it) a URI.
func (p *Policy) repository(named string) (string, []byte, error) {
	if named == "" {
		named = p.cfg.DefaultRepository
		if named == "" {
			return "", nil, fmt.Errorf("%w: the job names no repository and the worker has no default", ErrForbidden)
		}
	}
	if r, ok := p.cfg.Repositories[named]; ok {
		return r.URI, r.Key, nil
	}
	if repositoryName.MatchString(named) {
		return "", nil, fmt.Errorf("%w: no repository named %s (the worker has %v)", ErrForbidden, quoteShort(named), names(p.cfg.Repositories))
	}
	if !p.cfg.RepositoryURIs {
		return "", nil, fmt.Errorf("%w: repository %s: jobs name a repository of the worker's table, not a URI", ErrForbidden, quoteShort(named))
	}
	if err := checkJobRepositoryURI(named); err != nil {
		return "", nil, err
	}
	return named, p.cfg.URIKey, nil
}

// operatorParameters are the parts of a repository URI that pick the worker's
// own credentials. A job that could name them would send the keys of another
// repository, or of any file the worker may read, to an endpoint of its choice.
var operatorParameters = []string{"credentials_file", "profile"}

// checkJobRepositoryURI refuses a job's repository URI that picks credentials.
func checkJobRepositoryURI(uri string) error {
	u, err := url.Parse(uri)
	if err != nil {
		return fmt.Errorf("%w: repository %s: %v", ErrInvalid, quoteShort(uri), err)
	}
	q := u.Query()
	for _, k := range operatorParameters {
		if q.Has(k) {
			return fmt.Errorf("%w: repository %s: %s= picks the worker's credentials; only the operator's repository table may", ErrForbidden, quoteShort(uri), k)
		}
	}
	return nil
}

// WithPolicy makes the runner check every job against p before it opens
// anything: the job's repository is a name from p's table, its source and target
// must be on p's allow-lists. A runner without a policy is the operator's (the
// command line) and opens what it is given.
func WithPolicy(p *Policy) RunnerOption { return func(c *runnerConfig) { c.policy = p } }

// forJob is the runner for one job, with the key of the job's repository, the job
// with the URIs to open, and the repository's URI.
func (r *Runner) forJob(s Spec) (*Runner, Spec, string, error) {
	if r.cfg.policy == nil {
		repoURI := s.Repository
		if repoURI == "" {
			repoURI = r.cfg.repository
		}
		if repoURI == "" {
			return nil, s, "", fmt.Errorf("%w: job %s names no repository and the worker has no default", ErrInvalid, s.ID)
		}
		return r, s, repoURI, nil
	}
	g, err := r.cfg.policy.admit(s)
	if err != nil {
		return nil, s, "", err
	}
	job := &Runner{cfg: r.cfg}
	job.cfg.key = g.key
	return job, g.spec, g.repository, nil
}
