package main

// Compose: blockferry's services, their environment and build, and the nats-box
// job that provisions JetStream.

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/blockferry/blockferry/internal/testutil"
	"github.com/blockferry/blockferry/jobs"
	"github.com/blockferry/blockferry/worker"
)

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
