package main

// systemd: the unit's Exec* lines, its environment files and stop timeout.

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

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
