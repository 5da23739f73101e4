package main

// The deployment files under deploy/ (Compose, Kubernetes, systemd) are checked
// against the binary's own command tree: a BLOCKFERRY_* variable or a --flag that
// blockferry does not have, an unexpected image, or a stop timeout shorter than the
// worker's grace period fails these tests.

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"

	"github.com/blockferry/blockferry/internal/testutil"
	"github.com/blockferry/blockferry/jobs"
	"github.com/blockferry/blockferry/worker"
)

// deploySecretEnv are the variables blockferry reads that belong to no flag.
var deploySecretEnv = []string{"BLOCKFERRY_KEY", "BLOCKFERRY_NATS_PASSWORD", "BLOCKFERRY_NATS_TOKEN", "BLOCKFERRY_CONFIG"}

// deployAllowedImages are the image repositories deploy/ may use besides blockferry's.
var deployAllowedImages = map[string]bool{
	"blockferry":        true, // built from the repository's Dockerfile
	"nats":              true,
	"versity/versitygw": true,
	"natsio/nats-box":   true,
	"amazon/aws-cli":    true,
}

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

// deployImageRepo splits an image reference into repository (without docker.io/ and
// library/) and tag.
func deployImageRepo(ref string) (repo, tag string) {
	ref, _, _ = strings.Cut(ref, "@")
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		ref, tag = ref[:i], ref[i+1:]
	}
	ref = strings.TrimPrefix(ref, "docker.io/")
	ref = strings.TrimPrefix(ref, "library/")
	return ref, tag
}

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

// collectImages records every image: field, wherever it is.
func (d *deployTree) collectImages(where string, v any) {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			if s, ok := dStr(e); ok && k == "image" {
				d.images[s] = append(d.images[s], where)
			} else {
				d.collectImages(where, e)
			}
		}
	case []any:
		for _, e := range v {
			d.collectImages(where, e)
		}
	}
}

// deployComposeEnv reads a Compose environment: a map, or a list of KEY=VALUE.
func deployComposeEnv(v any) map[string]any {
	out := map[string]any{}
	for k, e := range dMap(v) {
		out[k] = e
	}
	for _, e := range dList(v) {
		s, _ := dStr(e)
		k, val, ok := strings.Cut(s, "=")
		if ok {
			out[k] = val
		} else {
			out[k] = nil
		}
	}
	return out
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

func (d *deployTree) collectCompose(t *testing.T, where, rel string, services map[string]any) {
	for name, sv := range services {
		svc := dMap(sv)
		at := fmt.Sprintf("%s service %s", where, name)
		env := deployComposeEnv(svc["environment"])
		for k := range env {
			d.envNames[k] = append(d.envNames[k], at+" environment")
		}
		image, _ := dStr(svc["image"])
		repo, _ := deployImageRepo(image)
		if b := svc["build"]; b != nil {
			// Built here: it must be blockferry's image from the repository's Dockerfile.
			if repo != "blockferry" {
				t.Errorf("%s: builds an image named %q, want blockferry:<tag>", at, image)
			}
			ctx, _ := dStr(dMap(b)["context"])
			if s, ok := dStr(b); ok {
				ctx = s
			}
			dockerfile, _ := dStr(dMap(b)["dockerfile"])
			if dockerfile == "" {
				dockerfile = "Dockerfile"
			}
			dir := filepath.Join(deployRoot(), filepath.Dir(rel), ctx)
			if filepath.Clean(dir) != filepath.Clean(testutil.RepoRoot()) {
				t.Errorf("%s: build context %q is %s, not the repository root", at, ctx, dir)
			}
			if _, err := os.Stat(filepath.Join(dir, dockerfile)); err != nil {
				t.Errorf("%s: build: %v", at, err)
			}
		}
		for _, dep := range deployComposeDeps(svc["depends_on"]) {
			if services[dep] == nil {
				t.Errorf("%s: depends on %q, which is not a service", at, dep)
			}
		}
		var runs []deployRun
		entry := dWords(svc["entrypoint"])
		command := dWords(svc["command"])
		switch {
		case len(entry) > 0 && deployIsBlockferry(entry[0]):
			runs = append(runs, deployRun{where: at + " entrypoint/command", args: append(entry[1:], command...)})
		case len(entry) == 0 && repo == "blockferry":
			if len(command) == 0 {
				command = []string{"worker"} // the image's CMD
			}
			runs = append(runs, deployRun{where: at + " command", args: command})
		}
		for i := range runs {
			runs[i].env = deployLiteralEnv(env)
		}
		if hc := dMap(svc["healthcheck"]); hc != nil {
			test := dWords(hc["test"])
			if len(test) > 1 && test[0] == "CMD" && deployIsBlockferry(test[1]) {
				runs = append(runs, deployRun{where: at + " healthcheck", args: test[2:], env: deployLiteralEnv(env)})
			}
			if len(test) > 1 && test[0] == "CMD-SHELL" {
				f := strings.Fields(strings.Join(test[1:], " "))
				if len(f) > 0 && deployIsBlockferry(f[0]) {
					runs = append(runs, deployRun{where: at + " healthcheck", args: f[1:], env: deployLiteralEnv(env)})
				}
			}
		}
		d.invocations = append(d.invocations, runs...)
		for _, inv := range runs {
			if len(inv.args) == 0 || inv.args[0] != "worker" {
				continue
			}
			timeout := 10 * time.Second // Compose's default
			if s, ok := dScalar(svc["stop_grace_period"]); ok {
				var err error
				if timeout, err = time.ParseDuration(s); err != nil {
					t.Errorf("%s: stop_grace_period %q: %v", at, s, err)
				}
			}
			d.stops = append(d.stops, deployStop{where: at + " stop_grace_period", timeout: timeout, inv: inv})
		}
	}
}

func deployComposeDeps(v any) []string {
	var out []string
	for k := range dMap(v) {
		out = append(out, k)
	}
	for _, e := range dList(v) {
		s, _ := dStr(e)
		out = append(out, s)
	}
	return out
}

// deployPodSpec finds the pod spec of a Kubernetes workload (Pod, Deployment, Job, ...).
func deployPodSpec(m map[string]any) map[string]any {
	if m["kind"] == "Pod" {
		return dMap(m["spec"])
	}
	spec := dMap(m["spec"])
	if jt := dMap(spec["jobTemplate"]); jt != nil { // CronJob
		spec = dMap(jt["spec"])
	}
	if tpl := dMap(spec["template"]); tpl != nil {
		return dMap(tpl["spec"])
	}
	return nil
}

func (d *deployTree) collectPod(where string, obj, spec map[string]any) {
	kind, _ := dStr(obj["kind"])
	name, _ := dStr(dMap(obj["metadata"])["name"])
	var containers []any
	containers = append(containers, dList(spec["initContainers"])...)
	containers = append(containers, dList(spec["containers"])...)
	for _, cv := range containers {
		c := dMap(cv)
		cname, _ := dStr(c["name"])
		at := fmt.Sprintf("%s %s/%s container %s", where, kind, name, cname)
		env := map[string]any{}
		for _, ef := range dList(c["envFrom"]) {
			ref, _ := dStr(dMap(dMap(ef)["configMapRef"])["name"])
			for k, v := range d.configMap[ref] {
				env[k] = v
			}
		}
		for _, ev := range dList(c["env"]) {
			e := dMap(ev)
			k, _ := dStr(e["name"])
			d.envNames[k] = append(d.envNames[k], at+" env")
			if v, ok := dScalar(e["value"]); ok {
				env[k] = v
			} else if ref := dMap(dMap(e["valueFrom"])["configMapKeyRef"]); ref != nil {
				cm, _ := dStr(ref["name"])
				key, _ := dStr(ref["key"])
				env[k] = d.configMap[cm][key]
			} else {
				env[k] = nil // from a Secret or the downward API: not literal
			}
		}
		image, _ := dStr(c["image"])
		repo, _ := deployImageRepo(image)
		command, args := dWords(c["command"]), dWords(c["args"])
		var runs []deployRun
		switch {
		case len(command) > 0 && deployIsBlockferry(command[0]):
			runs = append(runs, deployRun{where: at, args: append(command[1:], args...)})
		case len(command) == 0 && repo == "blockferry":
			if len(args) == 0 {
				args = []string{"worker"}
			}
			runs = append(runs, deployRun{where: at, args: args})
		}
		for _, probe := range []string{"startupProbe", "livenessProbe", "readinessProbe"} {
			cmd := dWords(dMap(dMap(c[probe])["exec"])["command"])
			if len(cmd) > 0 && deployIsBlockferry(cmd[0]) {
				runs = append(runs, deployRun{where: at + " " + probe, args: cmd[1:]})
			}
		}
		for i := range runs {
			runs[i].env = deployLiteralEnv(env)
		}
		d.invocations = append(d.invocations, runs...)
		for _, inv := range runs {
			if len(inv.args) == 0 || inv.args[0] != "worker" {
				continue
			}
			tgps := 30 * time.Second // Kubernetes' default
			if s, ok := dScalar(spec["terminationGracePeriodSeconds"]); ok {
				n, _ := strconv.Atoi(s)
				tgps = time.Duration(n) * time.Second
			}
			d.stops = append(d.stops, deployStop{where: at + " terminationGracePeriodSeconds", timeout: tgps, inv: inv})
		}
	}
}

var deployEnvLine = regexp.MustCompile(`^#?\s*([A-Za-z_][A-Za-z0-9_]*)=(.*)$`)

// collectSystemd reads the unit files and environment files of deploy/systemd.
func (d *deployTree) collectSystemd(t *testing.T) {
	dir := filepath.Join(deployRoot(), "systemd")
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	type unit struct {
		rel  string
		keys map[string][]string
	}
	var units []unit
	for _, e := range entries {
		rel := "systemd/" + e.Name()
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case strings.HasSuffix(e.Name(), ".env"):
			sc := bufio.NewScanner(bytes.NewReader(data))
			for n := 1; sc.Scan(); n++ {
				m := deployEnvLine.FindStringSubmatch(strings.TrimSpace(sc.Text()))
				if m == nil {
					continue
				}
				d.envNames[m[1]] = append(d.envNames[m[1]], fmt.Sprintf("deploy/%s:%d", rel, n))
				if !strings.HasPrefix(sc.Text(), "#") {
					env[m[1]] = m[2]
				} else if m[2] != "" {
					// A commented example: its value must work once uncommented.
					d.invocations = append(d.invocations, deployRun{where: fmt.Sprintf("deploy/%s:%d (commented)", rel, n),
						args: []string{"worker"}, env: map[string]string{m[1]: m[2]}})
				}
			}
		case strings.HasSuffix(e.Name(), ".service"):
			u := unit{rel: rel, keys: map[string][]string{}}
			sc := bufio.NewScanner(bytes.NewReader(data))
			for sc.Scan() {
				line := strings.TrimSpace(sc.Text())
				if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
					u.keys[k] = append(u.keys[k], v)
				}
			}
			units = append(units, u)
		}
	}
	if len(units) == 0 {
		t.Fatal("no systemd unit under deploy/systemd")
	}
	for _, u := range units {
		for _, v := range u.keys["Environment"] {
			for _, kv := range strings.Fields(v) {
				k, val, _ := strings.Cut(strings.Trim(kv, `"'`), "=")
				d.envNames[k] = append(d.envNames[k], "deploy/"+u.rel+" Environment=")
				env[k] = strings.Trim(val, `"'`)
			}
		}
		var runs []deployRun
		for _, key := range []string{"ExecStartPre", "ExecStart", "ExecStartPost", "ExecReload", "ExecStop"} {
			for _, v := range u.keys[key] {
				f := strings.Fields(strings.TrimLeft(v, "-@+!:"))
				if len(f) > 0 && deployIsBlockferry(f[0]) {
					runs = append(runs, deployRun{where: "deploy/" + u.rel + " " + key, args: f[1:], env: map[string]string{}})
				}
			}
		}
		for i := range runs {
			for k, v := range env {
				if strings.HasPrefix(k, "BLOCKFERRY_") {
					runs[i].env[k] = v
				}
			}
		}
		d.invocations = append(d.invocations, runs...)
		for _, inv := range runs {
			if len(inv.args) == 0 || inv.args[0] != "worker" || !strings.HasSuffix(inv.where, " ExecStart") {
				continue
			}
			timeout := 90 * time.Second // systemd's DefaultTimeoutStopSec
			if v := u.keys["TimeoutStopSec"]; len(v) > 0 {
				var err error
				if timeout, err = deploySystemdSpan(v[len(v)-1]); err != nil {
					t.Errorf("deploy/%s: TimeoutStopSec: %v", u.rel, err)
				}
			}
			d.stops = append(d.stops, deployStop{where: "deploy/" + u.rel + " TimeoutStopSec", timeout: timeout, inv: inv})
		}
	}
}

// deploySystemdSpan parses a systemd time span: seconds, or units such as "5min 30s".
func deploySystemdSpan(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if n, err := strconv.Atoi(s); err == nil {
		return time.Duration(n) * time.Second, nil
	}
	r := strings.NewReplacer(" ", "", "min", "m", "sec", "s", "hour", "h", "ms", "ms")
	return time.ParseDuration(r.Replace(s))
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

// TestDeployImages: every image is blockferry's or one of the expected third-party
// images, and those are pinned to a version.
func TestDeployImages(t *testing.T) {
	d := loadDeployTree(t)
	if len(d.images) == 0 {
		t.Fatal("no image: found under deploy/")
	}
	for ref, where := range d.images {
		repo, tag := deployImageRepo(ref)
		switch {
		case !deployAllowedImages[repo]:
			t.Errorf("%s: image %q is not blockferry:* nor one of %v", where[0], ref, slices.Sorted(maps.Keys(deployAllowedImages)))
		case repo != "blockferry" && (tag == "" || tag == "latest"):
			t.Errorf("%s: image %q is not pinned to a version", where[0], ref)
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

// TestDeployKubernetesConsistency: the KEDA trigger names the workers' stream and
// consumer and scales one worker per BLOCKFERRY_JOBS jobs; probes reach the port
// of BLOCKFERRY_HTTP; the pod runs as the image's user.
func TestDeployKubernetesConsistency(t *testing.T) {
	d := loadDeployTree(t)
	tp := worker.DefaultTopology()
	var cm map[string]string
	for _, data := range d.configMap {
		if data["BLOCKFERRY_NATS_URL"] != "" {
			cm = data
		}
	}
	if cm == nil {
		t.Fatal("no ConfigMap of worker settings (BLOCKFERRY_NATS_URL)")
	}
	if len(d.scaled) == 0 {
		t.Fatal("no ScaledObject")
	}
	for _, so := range d.scaled {
		for _, tv := range dList(dMap(so["spec"])["triggers"]) {
			tr := dMap(tv)
			if tr["type"] != "nats-jetstream" {
				t.Errorf("ScaledObject trigger type %v, want nats-jetstream", tr["type"])
				continue
			}
			md := dMap(tr["metadata"])
			for _, k := range []string{"natsServerMonitoringEndpoint", "account", "stream", "consumer", "lagThreshold"} {
				if s, _ := dScalar(md[k]); s == "" {
					t.Errorf("nats-jetstream trigger: no %s", k)
				}
			}
			if md["stream"] != tp.JobsStream || md["consumer"] != tp.Consumer {
				t.Errorf("nats-jetstream trigger on %v/%v, the workers consume %s/%s", md["stream"], md["consumer"], tp.JobsStream, tp.Consumer)
			}
			if jobsPer := deployWorkerSetting(t, "jobs", cm); md["lagThreshold"] != jobsPer {
				t.Errorf("lagThreshold %v, want BLOCKFERRY_JOBS (%s): one worker per that many jobs", md["lagThreshold"], jobsPer)
			}
		}
	}

	dockerfile, err := os.ReadFile(filepath.Join(testutil.RepoRoot(), "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	uid := regexp.MustCompile(`--uid (\d+)`).FindSubmatch(dockerfile)
	if uid == nil {
		t.Fatal("Dockerfile: no useradd --uid")
	}
	_, httpPort, _ := strings.Cut(deployWorkerSetting(t, "http", cm), ":")
	for _, f := range d.files {
		for _, doc := range f.docs {
			m := dMap(doc)
			spec := deployPodSpec(m)
			if spec == nil || m["kind"] != "Deployment" {
				continue
			}
			if s, _ := dScalar(dMap(spec["securityContext"])["runAsUser"]); s != string(uid[1]) {
				t.Errorf("deploy/%s: runAsUser %s, the image's user is %s", f.rel, s, uid[1])
			}
			for _, cv := range dList(spec["containers"]) {
				c := dMap(cv)
				ports := map[string]string{}
				for _, pv := range dList(c["ports"]) {
					p := dMap(pv)
					n, _ := dScalar(p["name"])
					ports[n], _ = dScalar(p["containerPort"])
				}
				for probe, want := range map[string]string{"livenessProbe": "/healthz", "readinessProbe": "/readyz"} {
					hg := dMap(dMap(c[probe])["httpGet"])
					port, _ := dScalar(hg["port"])
					if named, ok := ports[port]; ok {
						port = named
					}
					if hg["path"] != want || port != httpPort {
						t.Errorf("deploy/%s: %s is %v on port %s, want %s on %s (BLOCKFERRY_HTTP)", f.rel, probe, hg["path"], port, want, httpPort)
					}
				}
			}
		}
	}
}

// deployWorkerSetting is a worker setting from a ConfigMap, or the flag's default.
func deployWorkerSetting(t *testing.T, flag string, cm map[string]string) string {
	if v, ok := cm[envName(flag)]; ok {
		return v
	}
	root := newRootCommand()
	cmd, _, _ := root.Find([]string{"worker"})
	f := cmd.Flags().Lookup(flag)
	if f == nil {
		t.Fatalf("worker has no --%s", flag)
	}
	return f.DefValue
}

// deployNATSCommand is one `nats ...` line of a provisioning script.
type deployNATSCommand struct {
	words []string          // subcommand words and positional arguments
	flags map[string]string // --flag value, --flag=value; "" for booleans
}

// deployShellWords splits a line on blanks, keeping single- and double-quoted strings.
func deployShellWords(s string) []string {
	var out []string
	var cur strings.Builder
	in, quote := false, rune(0)
	for _, r := range s {
		switch {
		case quote != 0 && r == quote:
			quote = 0
		case quote != 0:
			cur.WriteRune(r)
		case r == '\'' || r == '"':
			quote, in = r, true
		case r == ' ' || r == '\t':
			if in {
				out = append(out, cur.String())
				cur.Reset()
				in = false
			}
		default:
			cur.WriteRune(r)
			in = true
		}
	}
	if in {
		out = append(out, cur.String())
	}
	return out
}

// deployShellOp reports whether an (unquoted) word is a redirection or a list operator.
func deployShellOp(w string) bool {
	return w == "||" || w == "&&" || w == "|" || w == ";" || strings.HasPrefix(w, ">") ||
		strings.HasPrefix(w, "<") || strings.HasPrefix(w, "2>")
}

func deployNATSCommands(script string) []deployNATSCommand {
	var out []deployNATSCommand
	script = strings.ReplaceAll(script, "\\\n", " ")
	for _, line := range strings.Split(script, "\n") {
		w := deployShellWords(strings.TrimSpace(line))
		if len(w) == 0 || w[0] != "nats" {
			continue
		}
		c := deployNATSCommand{flags: map[string]string{}}
		for i := 1; i < len(w); i++ {
			switch {
			case deployShellOp(w[i]):
				continue
			case strings.HasPrefix(w[i], "--"):
				k, v, ok := strings.Cut(strings.TrimPrefix(w[i], "--"), "=")
				if !ok && i+1 < len(w) && !strings.HasPrefix(w[i+1], "--") && !deployShellOp(w[i+1]) {
					v = w[i+1]
					i++
				}
				c.flags[k] = v
			default:
				c.words = append(c.words, w[i])
			}
		}
		out = append(out, c)
	}
	return out
}

// TestDeployComposeProvisioning: the nats-box job creates the streams, consumer
// and buckets of docs/JOBS.md with what worker.Provision would create, so that
// the workers accept them (worker/provision.go: ensureStream).
func TestDeployComposeProvisioning(t *testing.T) {
	d := loadDeployTree(t)
	if d.compose == nil {
		t.Fatal("no Compose file")
	}
	tp := worker.DefaultTopology()
	var script string
	replicas := ""
	for _, sv := range d.compose {
		svc := dMap(sv)
		image, _ := dStr(svc["image"])
		if repo, _ := deployImageRepo(image); repo == "natsio/nats-box" {
			// sh -ec SCRIPT: the script is the command (or its last element).
			script, _ = dStr(svc["command"])
			if l := dList(svc["command"]); len(l) > 0 {
				script, _ = dStr(l[len(l)-1])
			}
		}
		if v, ok := dScalar(deployComposeEnv(svc["environment"])["BLOCKFERRY_REPLICAS"]); ok {
			if replicas != "" && v != replicas {
				t.Errorf("workers disagree on BLOCKFERRY_REPLICAS: %s and %s", replicas, v)
			}
			replicas = v
		}
	}
	if script == "" {
		t.Fatal("no natsio/nats-box provisioning service in the Compose file")
	}
	if replicas == "" {
		t.Fatal("Compose workers do not set BLOCKFERRY_REPLICAS")
	}
	find := func(words ...string) deployNATSCommand {
		t.Helper()
		for _, c := range deployNATSCommands(script) {
			if slices.Equal(c.words, words) {
				return c
			}
		}
		t.Fatalf("provisioning runs no `nats %s`", strings.Join(words, " "))
		return deployNATSCommand{}
	}
	check := func(c deployNATSCommand, flag, want string) {
		t.Helper()
		got, ok := c.flags[flag]
		if d, err := time.ParseDuration(want); err == nil && ok {
			if g, err := time.ParseDuration(got); err == nil && g == d {
				return
			}
		}
		if !ok || got != want {
			t.Errorf("nats %s: --%s %q, want %q", strings.Join(c.words, " "), flag, got, want)
		}
	}

	js := find("stream", "add", tp.JobsStream)
	check(js, "subjects", tp.Prefix+".jobs.>")
	check(js, "retention", "work")
	check(js, "max-msg-size", strconv.Itoa(jobs.MaxSpecBytes))
	check(js, "dupe-window", (24 * time.Hour).String())
	check(js, "replicas", replicas)
	check(js, "storage", "file")

	ev := find("stream", "add", tp.EventsStream)
	check(ev, "subjects", tp.Prefix+".events.>")
	check(ev, "retention", "limits")
	check(ev, "max-age", tp.EventsMaxAge.String())
	check(ev, "replicas", replicas)
	check(ev, "storage", "file")

	co := find("consumer", "add", tp.JobsStream, tp.Consumer)
	check(co, "pull", "")
	check(co, "ack", "explicit")
	check(co, "deliver", "all")
	check(co, "replay", "instant")
	check(co, "filter", tp.Prefix+".jobs.>")
	check(co, "wait", tp.AckWait.String())
	check(co, "max-deliver", strconv.Itoa(tp.MaxDeliver))
	// Not updatable on an existing consumer: must equal what the worker asks for.
	check(co, "max-waiting", "512")

	for _, b := range []string{tp.StatusBucket, tp.CancelBucket} {
		kv := find("kv", "add", b)
		check(kv, "history", "1")
		check(kv, "ttl", tp.EventsMaxAge.String())
		check(kv, "replicas", replicas)
	}
}
