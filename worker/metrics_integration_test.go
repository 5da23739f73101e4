package worker_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/blockferry/blockferry/internal/testutil"
)

// promSample is one sample line of the Prometheus text format.
type promSample struct {
	name   string
	labels map[string]string
	value  float64
}

// promKey is name{a="x",b="y"} with the labels sorted, as a lookup key.
func promKey(name string, labels map[string]string) string {
	if len(labels) == 0 {
		return name
	}
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%q", k, labels[k])
	}
	return name + "{" + strings.Join(parts, ",") + "}"
}

// parsePromText reads the Prometheus text exposition format (version 0.0.4): the
// samples, and the # TYPE of each metric family.
func parsePromText(t *testing.T, body string) (map[string]promSample, map[string]string) {
	t.Helper()
	samples, types := map[string]promSample{}, map[string]string{}
	for n, line := range strings.Split(body, "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		if strings.HasPrefix(line, "#") {
			if f := strings.Fields(line); len(f) == 4 && f[1] == "TYPE" {
				types[f[2]] = f[3]
			}
			continue
		}
		s := promSample{labels: map[string]string{}}
		rest := line
		if i := strings.IndexAny(line, "{ "); i > 0 && line[i] == '{' {
			s.name = line[:i]
			rest = line[i+1:]
			for !strings.HasPrefix(rest, "}") {
				eq := strings.Index(rest, `="`)
				if eq < 0 {
					t.Fatalf("/metrics line %d: bad labels: %s", n+1, line)
				}
				key := strings.TrimLeft(rest[:eq], ",")
				rest = rest[eq+2:]
				var val strings.Builder
				for i := 0; ; i++ {
					if i >= len(rest) {
						t.Fatalf("/metrics line %d: unterminated label value: %s", n+1, line)
					}
					if rest[i] == '\\' && i+1 < len(rest) {
						switch rest[i+1] {
						case 'n':
							val.WriteByte('\n')
						default:
							val.WriteByte(rest[i+1])
						}
						i++
						continue
					}
					if rest[i] == '"' {
						rest = rest[i+1:]
						break
					}
					val.WriteByte(rest[i])
				}
				s.labels[key] = val.String()
				rest = strings.TrimPrefix(rest, ",")
			}
			rest = strings.TrimPrefix(rest, "}")
		} else {
			s.name, rest, _ = strings.Cut(line, " ")
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			t.Fatalf("/metrics line %d: no value: %s", n+1, line)
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			t.Fatalf("/metrics line %d: value: %v", n+1, err)
		}
		s.value = v
		samples[promKey(s.name, s.labels)] = s
	}
	return samples, types
}

// metricsGet returns the status and body of a GET, or status 0 when the request
// fails.
func metricsGet(url string) (int, string) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// metricsWaitStatus polls url until it answers want.
func metricsWaitStatus(t *testing.T, url string, want int, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		code, body := metricsGet(url)
		if code == want {
			return body
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d %s after %s, want %d", url, code, strings.TrimSpace(body), timeout, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestWorkerMetricsAndReadiness runs a `blockferry worker --http` process against a
// nats-server process, backs up a raw file through it, and checks what it serves:
// /metrics counts the job and its bytes exactly as the completed event reports
// them; /healthz is up; /readyz follows the NATS connection down and up again, and
// the worker takes jobs after NATS came back.
func TestWorkerMetricsAndReadiness(t *testing.T) {
	e := newProcessEnv(t)
	base := fmt.Sprintf("http://127.0.0.1:%d", testutil.FreePort(t))
	e.startWorkerProc("metrics", "--http", strings.TrimPrefix(base, "http://"))
	e.waitProvisioned()

	if code, body := metricsGet(base + "/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz: %d %s", code, body)
	}
	metricsWaitStatus(t, base+"/readyz", http.StatusOK, 10*time.Second)
	_, body := metricsGet(base + "/metrics")
	before, _ := parsePromText(t, body)
	if s, ok := before[`blockferry_jobs_started_total{kind="backup"}`]; ok && s.value != 0 {
		t.Fatalf("jobs started before any job: %v", s.value)
	}

	// A backup of 6 MiB of random data in 1 MiB chunks: every byte is read and
	// stored (compressed zstd frames of incompressible data grow a little).
	const size = 6 * mib
	uri, _ := randomDisk(t, filepath.Join(e.dir, "disk.raw"), size, 7)
	const id = "metrics-backup-1"
	e.submit("backup", id, backupJob(id, "vm-7/vda", uri, `{"chunk_size":1048576}`))
	done := terminalOnly(t, e.waitEnd(id, 60*time.Second), typeCompleted)
	bytesRead, bytesWritten := statInt(t, done, "bytes_read"), statInt(t, done, "bytes_written")
	if bytesRead != size || bytesWritten <= 0 {
		t.Fatalf("completed event stats: bytes_read %d bytes_written %d, want %d read and some written: %s", bytesRead, bytesWritten, size, done.raw)
	}

	// The attempt is recorded when handling ends, just after the terminal event.
	var samples map[string]promSample
	var types map[string]string
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, body := metricsGet(base + "/metrics")
		if code != http.StatusOK {
			t.Fatalf("/metrics: %d %s", code, body)
		}
		samples, types = parsePromText(t, body)
		if samples[`blockferry_jobs_finished_total{kind="backup",outcome="completed"}`].value >= 1 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	value := func(key string) float64 {
		t.Helper()
		s, ok := samples[key]
		if !ok {
			t.Errorf("/metrics has no %s", key)
		}
		return s.value
	}
	for key, want := range map[string]float64{
		`blockferry_jobs_started_total{kind="backup"}`:                                        1,
		`blockferry_jobs_finished_total{kind="backup",outcome="completed"}`:                   1,
		`blockferry_job_duration_seconds_count{kind="backup",outcome="completed"}`:            1,
		`blockferry_jobs_in_flight{kind="backup"}`:                                            0,
		`blockferry_bytes_total{direction="read",kind="backup"}`:                              float64(bytesRead),
		`blockferry_bytes_total{direction="written",kind="backup"}`:                           float64(bytesWritten),
		`blockferry_bytes_total{direction="deduplicated",kind="backup"}`:                      float64(statInt(t, done, "bytes_deduplicated")),
		`blockferry_job_duration_seconds_bucket{kind="backup",le="+Inf",outcome="completed"}`: 1,
	} {
		if got := value(key); got != want {
			t.Errorf("%s = %v, want %v", key, got, want)
		}
	}
	for fam, typ := range map[string]string{
		"blockferry_jobs_started_total": "counter", "blockferry_jobs_finished_total": "counter",
		"blockferry_job_duration_seconds": "histogram", "blockferry_bytes_total": "counter",
		"blockferry_store_request_duration_seconds": "histogram", "blockferry_source_request_duration_seconds": "histogram",
		"blockferry_jobs_in_flight": "gauge",
	} {
		if types[fam] != typ {
			t.Errorf("# TYPE %s is %q, want %s", fam, types[fam], typ)
		}
	}
	if d := value(`blockferry_job_duration_seconds_sum{kind="backup",outcome="completed"}`); d <= 0 || d > 60 {
		t.Errorf("job duration sum %v s, want the backup's few seconds", d)
	}
	// Repository requests (file store) and source reads are measured.
	storeOps := map[string]float64{}
	for _, s := range samples {
		switch {
		case s.name == "blockferry_store_request_duration_seconds_count":
			if s.labels["backend"] != "file" {
				t.Errorf("store request backend %q, want file", s.labels["backend"])
			}
			storeOps[s.labels["op"]] += s.value
		case s.name == "blockferry_store_request_errors_total" && s.value != 0:
			t.Errorf("store request errors: %s %v", promKey(s.name, s.labels), s.value)
		case s.name == "blockferry_source_request_errors_total" && s.value != 0:
			t.Errorf("source request errors: %s %v", promKey(s.name, s.labels), s.value)
		}
	}
	if storeOps["put_if_absent"]+storeOps["put"] < float64(size/mib) || storeOps["get"]+storeOps["exists"] == 0 {
		t.Errorf("store requests by op %v: want at least one write per chunk (%d) and some reads", storeOps, size/mib)
	}
	if n := value(`blockferry_source_request_duration_seconds_count{op="read"}`); n < float64(size/mib) {
		t.Errorf("source reads: %v, want at least one per chunk (%d)", n, size/mib)
	}
	t.Logf("store requests by op: %v", storeOps)

	// NATS goes away: not ready (the worker cannot take or report jobs), but alive.
	e.nats.Stop()
	body = metricsWaitStatus(t, base+"/readyz", http.StatusServiceUnavailable, 10*time.Second)
	var ready struct {
		Ready    bool              `json:"ready"`
		Failures map[string]string `json:"failures"`
	}
	if err := json.Unmarshal([]byte(body), &ready); err != nil || ready.Ready || ready.Failures["nats"] == "" {
		t.Errorf("/readyz with NATS down: %s (want ready false and a nats failure)", body)
	}
	if code, body := metricsGet(base + "/healthz"); code != http.StatusOK {
		t.Errorf("/healthz with NATS down: %d %s, want 200 (alive)", code, body)
	}

	// NATS is back: ready again, and taking jobs.
	e.nats.Start()
	metricsWaitStatus(t, base+"/readyz", http.StatusOK, 15*time.Second)
	const id2 = "metrics-backup-2"
	e.submit("backup", id2, backupJob(id2, "vm-7/vda", uri, `{"chunk_size":1048576}`))
	terminalOnly(t, e.waitEnd(id2, 60*time.Second), typeCompleted)
	deadline = time.Now().Add(10 * time.Second)
	for {
		_, body := metricsGet(base + "/metrics")
		samples, _ = parsePromText(t, body)
		if value(`blockferry_jobs_finished_total{kind="backup",outcome="completed"}`) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after a second backup: %v completed", value(`blockferry_jobs_finished_total{kind="backup",outcome="completed"}`))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got := value(`blockferry_jobs_started_total{kind="backup"}`); got != 2 {
		t.Errorf("jobs started after a second backup: %v, want 2", got)
	}
}
