package main

// The deployment files under deploy/ (Compose, Kubernetes, systemd) are checked
// against the binary's own command tree: a BLOCKFERRY_* variable or a --flag that
// blockferry does not have, an unexpected image, or a stop timeout shorter than the
// worker's grace period fails these tests.
//
// This file collects the deployment tree and holds the checks that span all
// targets; deploy_compose_test.go, deploy_k8s_test.go, deploy_systemd_test.go and
// deploy_docker_test.go read and check each kind of deployment.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"

	"github.com/blockferry/blockferry/internal/testutil"
	"github.com/blockferry/blockferry/worker"
)

// deploySecretEnv are the variables blockferry reads that belong to no flag.
var deploySecretEnv = []string{"BLOCKFERRY_KEY", "BLOCKFERRY_NATS_PASSWORD", "BLOCKFERRY_NATS_TOKEN", "BLOCKFERRY_CONFIG"}

func deployRoot() string { return filepath.Join(testutil.RepoRoot(), "deploy") }

// deployFile is one YAML file of deploy/ with its documents.
type deployFile struct {
	rel  string // path relative to deploy/
	docs []any
}

// deployYAMLFiles parses every *.yaml and *.yml under deploy/, all documents of each.
func deployYAMLFiles(t *testing.T) []deployFile {
	t.Helper()
	var out []deployFile
	err := filepath.WalkDir(deployRoot(), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !(strings.HasSuffix(p, ".yaml") || strings.HasSuffix(p, ".yml")) {
			return err
		}
		rel, _ := filepath.Rel(deployRoot(), p)
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		f := deployFile{rel: filepath.ToSlash(rel)}
		dec := yaml.NewDecoder(bytes.NewReader(data))
		for i := 1; ; i++ {
			var doc any
			err := dec.Decode(&doc)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return fmt.Errorf("deploy/%s: document %d: %w", f.rel, i, err)
			}
			if doc != nil {
				f.docs = append(f.docs, doc)
			}
		}
		if len(f.docs) == 0 {
			return fmt.Errorf("deploy/%s: no YAML document", f.rel)
		}
		out = append(out, f)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(out) == 0 {
		t.Fatal("no YAML files under deploy/")
	}
	return out
}

func dMap(v any) map[string]any { m, _ := v.(map[string]any); return m }
func dList(v any) []any         { l, _ := v.([]any); return l }
func dStr(v any) (string, bool) { s, ok := v.(string); return s, ok }
func dScalar(v any) (string, bool) { // a YAML scalar as the string a program sees
	switch v := v.(type) {
	case string:
		return v, true
	case int, int64, float64, bool:
		return fmt.Sprint(v), true
	}
	return "", false
}

// dWords are the strings of a YAML list or a string split into words (Compose's command forms).
func dWords(v any) []string {
	if s, ok := v.(string); ok {
		return strings.Fields(s)
	}
	var out []string
	for _, e := range dList(v) {
		s, _ := dScalar(e)
		out = append(out, s)
	}
	return out
}

// deployCLI is what blockferry accepts, derived from its command tree.
type deployCLI struct {
	env      map[string]bool // every variable blockferry reads
	flagEnv  map[string]bool // those that set a flag
	topology map[string]bool // JetStream names, which look like variables but are not
}

func newDeployCLI(t *testing.T) deployCLI {
	t.Helper()
	m := deployCLI{env: map[string]bool{}, flagEnv: map[string]bool{}, topology: map[string]bool{}}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, set := range []*pflag.FlagSet{c.LocalFlags(), c.InheritedFlags()} {
			set.VisitAll(func(f *pflag.Flag) {
				if takesEnv(f) {
					m.flagEnv[envName(f.Name)] = true
					m.env[envName(f.Name)] = true
				}
			})
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(newRootCommand())
	if !m.flagEnv["BLOCKFERRY_NATS_URL"] || !m.flagEnv["BLOCKFERRY_GRACE_PERIOD"] || !m.flagEnv["BLOCKFERRY_REPOSITORY"] {
		t.Fatalf("walking the command tree found too few flags: %v", m.flagEnv)
	}
	for _, s := range deploySecretEnv {
		m.env[s] = true
	}
	tp := worker.DefaultTopology()
	for _, n := range []string{tp.JobsStream, tp.EventsStream, tp.StatusBucket, tp.CancelBucket} {
		m.topology[n] = true
	}
	return m
}

// deployRun is one run of blockferry that a deployment file configures.
type deployRun struct {
	where string            // file and place, for messages
	args  []string          // after the program name
	env   map[string]string // literal BLOCKFERRY_* values it gets from the file(s)
}

// parse resolves the subcommand and parses the flags as blockferry would,
// returning the command with its flags set.
func (inv deployRun) parse() (*cobra.Command, error) {
	root := newRootCommand()
	cmd, rest, err := root.Find(inv.args)
	if err != nil {
		return nil, err
	}
	if cmd == root {
		return nil, fmt.Errorf("no subcommand in %q", inv.args)
	}
	if err := cmd.ParseFlags(rest); err != nil {
		return nil, fmt.Errorf("blockferry %s: %w", cmd.Name(), err)
	}
	if err := cmd.ValidateArgs(cmd.Flags().Args()); err != nil {
		return nil, fmt.Errorf("blockferry %s: %w", cmd.Name(), err)
	}
	return cmd, nil
}

// deployIsBlockferry reports whether a program path runs blockferry.
func deployIsBlockferry(p string) bool { return path.Base(p) == "blockferry" }

// deployTree is everything the tests look at, collected once.
type deployTree struct {
	files       []deployFile
	invocations []deployRun
	// envNames are the variables set or listed structurally (environment maps,
	// env lists, ConfigMaps, systemd environment), with where they are.
	envNames map[string][]string
	images   map[string][]string // image reference -> where
	// stops are the stop timeouts of worker runs, against their grace period.
	stops []deployStop
	// compose services, for the provisioning and KEDA checks.
	compose   map[string]any
	configMap map[string]map[string]string
	scaled    []map[string]any
}

type deployStop struct {
	where   string
	timeout time.Duration
	inv     deployRun
}

func loadDeployTree(t *testing.T) *deployTree {
	t.Helper()
	d := &deployTree{files: deployYAMLFiles(t), envNames: map[string][]string{}, images: map[string][]string{}, configMap: map[string]map[string]string{}}
	// ConfigMaps first: containers refer to them.
	for _, f := range d.files {
		for _, doc := range f.docs {
			m := dMap(doc)
			if m["kind"] == "ConfigMap" {
				name, _ := dStr(dMap(m["metadata"])["name"])
				data := map[string]string{}
				for k, v := range dMap(m["data"]) {
					data[k], _ = dScalar(v)
				}
				d.configMap[name] = data
			}
		}
	}
	for _, f := range d.files {
		for i, doc := range f.docs {
			where := fmt.Sprintf("deploy/%s#%d", f.rel, i+1)
			d.collectImages(where, doc)
			m := dMap(doc)
			switch {
			case dMap(m["services"]) != nil && m["kind"] == nil:
				d.compose = dMap(m["services"])
				d.collectCompose(t, where, f.rel, d.compose)
			case m["kind"] == "ConfigMap":
				name, _ := dStr(dMap(m["metadata"])["name"])
				for k := range dMap(m["data"]) {
					d.envNames[k] = append(d.envNames[k], where+" ConfigMap "+name)
				}
			case m["kind"] == "ScaledObject":
				d.scaled = append(d.scaled, m)
			}
			if spec := deployPodSpec(m); spec != nil {
				d.collectPod(where, m, spec)
			}
		}
	}
	d.collectSystemd(t)
	return d
}

// deployLiteralEnv keeps the BLOCKFERRY_* values that are literal (no ${...}).
func deployLiteralEnv(env map[string]any) map[string]string {
	out := map[string]string{}
	for k, v := range env {
		if s, ok := dScalar(v); ok && strings.HasPrefix(k, "BLOCKFERRY_") && !strings.Contains(s, "${") {
			out[k] = s
		}
	}
	return out
}

// TestDeployFilesParse: every YAML file under deploy/ parses, every document of
// it, and the three kinds of deployment are there.
func TestDeployFilesParse(t *testing.T) {
	d := loadDeployTree(t)
	var names []string
	for _, f := range d.files {
		names = append(names, fmt.Sprintf("%s (%d)", f.rel, len(f.docs)))
	}
	t.Logf("parsed: %s", strings.Join(names, ", "))
	if d.compose == nil {
		t.Error("no Compose file (services:) under deploy/")
	}
	kinds := map[string]bool{}
	for _, f := range d.files {
		for _, doc := range f.docs {
			if k, ok := dStr(dMap(doc)["kind"]); ok {
				kinds[k] = true
			}
		}
	}
	for _, k := range []string{"Deployment", "ConfigMap", "Secret", "PodDisruptionBudget", "ScaledObject"} {
		if !kinds[k] {
			t.Errorf("no Kubernetes %s under deploy/", k)
		}
	}
}

var deployEnvRef = regexp.MustCompile(`(?:^|[^A-Za-z0-9_])(BLOCKFERRY_[A-Z0-9_]*[A-Z0-9])`)

// TestDeployEnvVars: every BLOCKFERRY_* variable the deployment files name is one
// blockferry reads: a flag's variable (of any command) or one of the variables
// without a flag. Set variables (environment maps, env lists, ConfigMaps, systemd
// environment) must be exactly that; in free text (scripts, comments, READMEs) the
// JetStream names BLOCKFERRY_EVENTS, _STATUS, _CANCEL are allowed too. Literal
// values must also parse as the worker's flags would.
func TestDeployEnvVars(t *testing.T) {
	m := newDeployCLI(t)
	d := loadDeployTree(t)

	var set []string
	for name, where := range d.envNames {
		if strings.HasPrefix(name, "BLOCKFERRY_") {
			set = append(set, name)
			if !m.env[name] {
				t.Errorf("%s: %s is not a blockferry setting (no flag has it, and it is not one of %v)", where[0], name, deploySecretEnv)
			}
		}
	}
	sort.Strings(set)
	t.Logf("set: %v", set)
	if len(set) < 5 {
		t.Errorf("found only %v set in deploy/: the collection is broken", set)
	}

	err := filepath.WalkDir(deployRoot(), func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if de.IsDir() {
			if de.Name() == "scripts" { // build and demo scripts, not deployment configuration
				return filepath.SkipDir
			}
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(testutil.RepoRoot(), p)
		for n, line := range strings.Split(string(data), "\n") {
			for _, sm := range deployEnvRef.FindAllStringSubmatch(line, -1) {
				if name := sm[1]; !m.env[name] && !m.topology[name] {
					t.Errorf("%s:%d: %s is not a blockferry setting", rel, n+1, name)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// Values: what a worker would do with them (flag > env > file > default).
	for _, inv := range d.invocations {
		root := newRootCommand()
		cmd, _, err := root.Find(inv.args)
		if err != nil || cmd == root {
			continue // TestDeployFlags reports it
		}
		cmd.InheritedFlags()
		for k, v := range inv.env {
			var flag *pflag.Flag
			cmd.Flags().VisitAll(func(f *pflag.Flag) {
				if envName(f.Name) == k && takesEnv(f) {
					flag = f
				}
			})
			if flag == nil || v == "" {
				continue
			}
			if err := setFlag(flag, []string{v}, true); err != nil {
				t.Errorf("%s: %s=%q is not a valid --%s: %v", inv.where, k, v, flag.Name, err)
			}
		}
	}
}

// TestDeployFlags: every blockferry run the files configure (Compose command,
// entrypoint and healthcheck, Kubernetes command/args and exec probes, systemd
// Exec*) names a subcommand, and its flags exist for that subcommand and parse.
func TestDeployFlags(t *testing.T) {
	d := loadDeployTree(t)
	found := map[string]int{}
	for _, inv := range d.invocations {
		if strings.HasSuffix(inv.where, "(commented)") {
			continue
		}
		found[strings.SplitN(strings.TrimPrefix(inv.where, "deploy/"), "/", 2)[0]]++
		if _, err := inv.parse(); err != nil {
			t.Errorf("%s: blockferry %s: %v", inv.where, strings.Join(inv.args, " "), err)
		}
	}
	t.Logf("blockferry runs checked per directory: %v", found)
	for _, dir := range []string{"compose", "kubernetes", "systemd"} {
		if found[dir] == 0 {
			t.Errorf("no blockferry run found in deploy/%s: the collection is broken", dir)
		}
	}
}

// TestDeployGracePeriod: whatever stops a worker (Kubernetes, Compose, systemd)
// waits at least the worker's grace period before it kills: flag, then
// environment, then the flag's default.
func TestDeployGracePeriod(t *testing.T) {
	d := loadDeployTree(t)
	kinds := map[string]bool{}
	for _, st := range d.stops {
		cmd, err := st.inv.parse()
		if err != nil {
			t.Errorf("%s: %v", st.where, err)
			continue
		}
		f := cmd.Flags().Lookup("grace-period")
		if f == nil {
			t.Fatalf("blockferry worker has no --grace-period")
		}
		if v, ok := st.inv.env[envName(f.Name)]; ok && !f.Changed {
			if err := f.Value.Set(v); err != nil {
				t.Errorf("%s: %s=%q: %v", st.where, envName(f.Name), v, err)
				continue
			}
		}
		grace, err := time.ParseDuration(f.Value.String())
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: %s for a grace period of %s", st.where, st.timeout, grace)
		if st.timeout < grace {
			t.Errorf("%s is %s, shorter than the worker's grace period %s: running jobs would be killed", st.where, st.timeout, grace)
		}
		kinds[strings.Fields(st.where)[len(strings.Fields(st.where))-1]] = true
	}
	if !kinds["terminationGracePeriodSeconds"] {
		t.Error("no Kubernetes worker found to check terminationGracePeriodSeconds")
	}
}
