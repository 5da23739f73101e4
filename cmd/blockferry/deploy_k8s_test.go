package main

// Kubernetes: pod specs, their environment from ConfigMaps, probes and the KEDA
// trigger.

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/blockferry/blockferry/internal/testutil"
	"github.com/blockferry/blockferry/worker"
)

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
