package main

import (
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"

	"github.com/blockferry/blockferry/jobs"
	"github.com/blockferry/blockferry/sinks/s3"
)

// configSections are keys of the configuration file that are not flags: the
// worker reads them itself.
var configSections = map[string]bool{"repositories": true}

// policyFlags are the worker's policy settings: what the jobs of its queue may
// touch. The repository table is a section of the configuration file:
//
//	repositories:
//	  default: {uri: "s3://backups/prod?endpoint=…", key_file: /etc/blockferry/prod.key}
//	  tenant-b: {uri: "s3://tenant-b/bf?endpoint=…", credentials_profile: tenant-b, key_file: /etc/blockferry/b.key}
//	  tenant-c: {uri: "s3://tenant-c/bf?endpoint=…", credentials_file: /etc/blockferry/c.env, key_file: /etc/blockferry/c.key}
//
// or, without keys of their own, --named-repository name=uri.
type policyFlags struct {
	named       []string
	defaultName string
	jobURIs     bool
	sources     []string
	targets     []string
	listens     []string
	maxServe    time.Duration
	prune       bool
}

func (p *policyFlags) register(f *pflag.FlagSet) {
	f.StringSliceVar(&p.named, "named-repository", nil, "a repository jobs may name, as name=uri (repeatable; its key is --key-file's; the config file's repositories: section gives each its own key_file and credentials_profile or credentials_file)")
	f.StringVar(&p.defaultName, "default-repository", "default", "name of the repository of jobs that name none (--repository, or the data directory's, is \"default\")")
	f.BoolVar(&p.jobURIs, "allow-job-repository-uris", false, "let jobs name a repository by URI, not only by name: only where whoever may publish jobs is the operator")
	f.StringSliceVar(&p.sources, "allow-source", nil, "URI patterns of the sources jobs may read, e.g. 'nbd+unix:///*?socket=/run/blockferry/*.sock', 'nbd://*.hv.example.net:10809/*', 'file:///srv/images/**' (default: NBD on Unix sockets only)")
	f.StringSliceVar(&p.targets, "allow-target", nil, "URI patterns of the targets restore jobs may write, e.g. 'file:///var/lib/blockferry/restore/*' (default: NBD on Unix sockets only)")
	f.StringSliceVar(&p.listens, "allow-serve-listen", nil, "addresses serve jobs may listen on, e.g. 'unix:///run/blockferry/serve/*.sock', 'tcp://127.0.0.1:*' (TCP on loopback only; default: none, serve jobs are refused)")
	f.DurationVar(&p.maxServe, "max-serve-lifetime", jobs.DefaultMaxServeLifetime, "longest a serve job serves, and the lifetime of one that names none")
	f.BoolVar(&p.prune, "allow-prune-jobs", false, "let prune jobs forget backups by their retention rules and collect garbage (the command line's forget and prune need no permission)")
	settings(f, "named-repository", "default-repository", "allow-job-repository-uris", "allow-source", "allow-target", "allow-serve-listen", "max-serve-lifetime", "allow-prune-jobs")
}

// repositoryEntry is one repository of the configuration file's table.
type repositoryEntry struct {
	URI                string `yaml:"uri"`
	KeyFile            string `yaml:"key_file"`
	CredentialsProfile string `yaml:"credentials_profile"`
	CredentialsFile    string `yaml:"credentials_file"`
}

// policy builds the worker's policy from its settings. defaultURI and key are the
// repository of --repository (or the data directory) and --key-file's key: they
// are the table's "default" unless the table has one.
func (p *policyFlags) policy(configFile, defaultURI string, key []byte) (*jobs.Policy, error) {
	table, err := readRepositoryTable(configFile)
	if err != nil {
		return nil, err
	}
	for _, nv := range p.named {
		name, uri, ok := strings.Cut(nv, "=")
		if !ok || uri == "" {
			return nil, fmt.Errorf("--named-repository %q: want name=uri", nv)
		}
		if _, dup := table[name]; dup {
			return nil, fmt.Errorf("repository %q is named twice", name)
		}
		table[name] = jobs.NamedRepository{URI: uri, Key: key}
	}
	if _, ok := table["default"]; !ok {
		table["default"] = jobs.NamedRepository{URI: defaultURI, Key: key}
	}
	return jobs.NewPolicy(jobs.PolicyConfig{
		Repositories: table, DefaultRepository: p.defaultName,
		RepositoryURIs: p.jobURIs, URIKey: key,
		Sources: p.sources, Targets: p.targets,
		Listens: p.listens, MaxServeLifetime: p.maxServe,
		PruneJobs: p.prune,
	})
}

// readRepositoryTable reads the repositories: section of the configuration file,
// with each repository's key.
func readRepositoryTable(file string) (map[string]jobs.NamedRepository, error) {
	table := map[string]jobs.NamedRepository{}
	if file == "" {
		return table, nil
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("config file: %w", err)
	}
	var doc struct {
		Repositories yaml.Node `yaml:"repositories"`
	}
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("config file %s: %w", file, err)
	}
	if doc.Repositories.IsZero() {
		return table, nil
	}
	var entries map[string]map[string]string
	if err := doc.Repositories.Decode(&entries); err != nil {
		return nil, fmt.Errorf("config file %s: repositories: %w", file, err)
	}
	names := make([]string, 0, len(entries))
	for name := range entries {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		r, err := repositoryFromYAML(entries[name])
		if err != nil {
			return nil, fmt.Errorf("config file %s: repositories: %s: %w", file, name, err)
		}
		table[name] = r
	}
	return table, nil
}

func repositoryFromYAML(fields map[string]string) (jobs.NamedRepository, error) {
	var e repositoryEntry
	for k, v := range fields {
		switch k {
		case "uri":
			e.URI = v
		case "key_file":
			e.KeyFile = v
		case "credentials_profile":
			e.CredentialsProfile = v
		case "credentials_file":
			e.CredentialsFile = v
		default:
			return jobs.NamedRepository{}, fmt.Errorf("unknown setting %q (want uri, key_file, credentials_profile, credentials_file)", k)
		}
	}
	if e.URI == "" {
		return jobs.NamedRepository{}, fmt.Errorf("no uri")
	}
	r := jobs.NamedRepository{URI: e.URI}
	if err := e.credentials(&r); err != nil {
		return r, err
	}
	if e.KeyFile != "" {
		k, err := readKeyFile(e.KeyFile)
		if err != nil {
			return r, err
		}
		r.Key = k
	}
	return r, nil
}

// credentials adds the entry's S3 credentials to r's URI: the profile's name or
// the credentials file's path (never what it holds), for the s3 store to read
// when it opens. A credentials file is checked now, so that a bad one stops the
// worker at start rather than failing its jobs.
func (e repositoryEntry) credentials(r *jobs.NamedRepository) error {
	setting, param, value := "credentials_profile", "profile", e.CredentialsProfile
	switch {
	case e.CredentialsProfile != "" && e.CredentialsFile != "":
		return fmt.Errorf("credentials_profile and credentials_file are two sources of credentials: give one")
	case e.CredentialsFile != "":
		path, err := filepath.Abs(e.CredentialsFile)
		if err != nil {
			return fmt.Errorf("credentials_file: %w", err)
		}
		if _, err := s3.ReadCredentialsFile(path); err != nil {
			return err
		}
		setting, param, value = "credentials_file", "credentials_file", path
	case e.CredentialsProfile == "":
		return nil
	}
	u, err := url.Parse(r.URI)
	if err != nil || u.Scheme != "s3" {
		return fmt.Errorf("%s applies to s3:// repositories", setting)
	}
	q := u.Query()
	q.Set(param, value)
	u.RawQuery = q.Encode()
	r.URI = u.String()
	return nil
}

// readKeyFile reads an encryption key from a file that only its owner may read:
// a key readable by group or others is refused, not used.
func readKeyFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("key file %s is open to group or others (mode %04o): chmod 600 it", path, perm)
	}
	b, err := io.ReadAll(io.LimitReader(f, 64<<10))
	if err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	k := []byte(strings.TrimRight(string(b), "\r\n"))
	if len(k) == 0 {
		return nil, fmt.Errorf("key file %s is empty", path)
	}
	return k, nil
}
