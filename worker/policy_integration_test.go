package worker_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/blockferry/blockferry/internal/testutil"
	"github.com/blockferry/blockferry/jobs"
	_ "github.com/blockferry/blockferry/sinks/s3"
)

// canary is a file a denied job must leave alone: same content, same mtime.
type canary struct {
	path    string
	content []byte
	mtime   time.Time
}

func newCanary(t *testing.T, path string, size int) canary {
	t.Helper()
	c := canary{path: path, content: bytes.Repeat([]byte("canary! "), size/8), mtime: time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)}
	if err := os.WriteFile(path, c.content, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, c.mtime, c.mtime); err != nil {
		t.Fatal(err)
	}
	return c
}

func (c canary) check(t *testing.T) {
	t.Helper()
	got, err := os.ReadFile(c.path)
	if err != nil || !bytes.Equal(got, c.content) {
		t.Errorf("canary %s changed: %d bytes, %v", c.path, len(got), err)
	}
	if st, err := os.Stat(c.path); err != nil || !st.ModTime().Equal(c.mtime) {
		t.Errorf("canary %s: mtime %v, want %v (%v)", c.path, st.ModTime(), c.mtime, err)
	}
}

// emptyDir checks that a directory has no entries (or does not exist).
func emptyDir(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	if len(ents) > 0 {
		t.Errorf("%s is no longer empty: %v", dir, ents)
	}
}

// loggingS3 is an S3 endpoint on loopback that counts the requests it gets and
// answers each with 500.
func loggingS3(t *testing.T) (*httptest.Server, *atomic.Int64) {
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		t.Logf("fake S3: %s %s (%s)", r.Method, r.URL, r.Header.Get("Authorization"))
		http.Error(w, "no", http.StatusInternalServerError)
	}))
	t.Cleanup(srv.Close)
	return srv, &n
}

// countingListener is a TCP port on loopback that counts the connections it
// accepts and closes them.
func countingListener(t *testing.T) (string, *atomic.Int64) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var n atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			c.Close()
		}
	}()
	return ln.Addr().String(), &n
}

// forbidden checks that a job failed at once with code forbidden, and that its
// error message carries no control character.
func (e *env) forbidden(id string) {
	e.t.Helper()
	ev := terminalOnly(e.t, e.waitEnd(id, 30*time.Second), typeFailed)
	if ev.Data.Error == nil || ev.Data.Error.Code != jobs.CodeForbidden || ev.Data.Error.Retryable || ev.Data.Attempt != 1 {
		e.t.Errorf("job %s: %v, want failed/forbidden at attempt 1", id, ev)
		return
	}
	if strings.ContainsFunc(ev.Data.Error.Message, func(r rune) bool { return r < ' ' || r == 0x7f }) {
		e.t.Errorf("job %s: control characters in %q", id, ev.Data.Error.Message)
	}
	if st := e.status(id); st.State != "failed" || st.Error == nil || st.Error.Code != jobs.CodeForbidden {
		e.t.Errorf("job %s: status %+v", id, st)
	}
}

// TestPolicyRefusesJobs publishes, as an orchestrator with a plain NATS client
// could, each job an attacker would: host files as sources, restores over host
// files, repositories the operator did not configure (a directory of the host, an
// S3 endpoint of the attacker's), NBD hosts to scan. Each fails at once with
// forbidden and touches nothing. The same jobs then succeed (or reach their
// endpoints) under a policy that allows them: the policy is what stopped them.
func TestPolicyRefusesJobs(t *testing.T) {
	e := newProcessEnv(t)
	host := filepath.Join(e.dir, "host") // stands for /etc, /root/.ssh, ...
	images := filepath.Join(e.dir, "images")
	restoreDir := filepath.Join(e.dir, "restore")
	cron := filepath.Join(host, "cron.d")
	for _, d := range []string{host, images, restoreDir, cron} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	shadow := newCanary(t, filepath.Join(host, "shadow"), 1<<20)
	keys := newCanary(t, filepath.Join(host, "authorized_keys"), 4096)
	oldImage := newCanary(t, filepath.Join(restoreDir, "old.raw"), 4096)
	if err := os.Symlink(keys.path, filepath.Join(restoreDir, "escape.raw")); err != nil {
		t.Fatal(err)
	}
	diskURI, diskSHA := randomDisk(t, filepath.Join(images, "disk.raw"), 3*mib, 7)
	s3srv, s3requests := loggingS3(t)
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDPOLICYTEST")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "secret")
	nbdAddr, nbdConns := countingListener(t)
	lootRepo := "s3://loot/x?endpoint=" + s3srv.URL
	const restoreOf = `{"spec_version":1,"id":%q,"kind":"restore","backup":"01JD0000000000000000000000","target":{"uri":%q%s}}`

	// A worker of a deployment with a repository table and an allow-list that
	// covers none of the above.
	strict, err := jobs.NewPolicy(jobs.PolicyConfig{
		Repositories:      map[string]jobs.NamedRepository{"default": {URI: e.repo}},
		DefaultRepository: "default",
		Sources:           []string{"nbd+unix:///*?socket=/run/blockferry/*.sock"},
		Targets:           []string{"file://" + restoreDir + "/*"},
	})
	if err != nil {
		t.Fatal(err)
	}
	e.runnerOpts = []jobs.RunnerOption{jobs.WithPolicy(strict)}
	w := e.startWorker("strict")
	denied := map[string]string{
		"shadow":      backupJob("deny-shadow", "host/shadow", "file://"+shadow.path, ""),
		"image":       backupJob("deny-image", "d/vda", diskURI, ""),
		"shadow-path": backupJob("deny-shadow-path", "host/shadow", restoreDir+"/../host/shadow", ""),
		"nbd-scan":    backupJob("deny-nbd-scan", "scan/x", "nbd://"+nbdAddr+"/x", ""),
		"ctl-chars":   `{"spec_version":1,"id":"deny-ctl-chars","kind":"backup","disk":"d/x","source":{"uri":"file:///etc/\u001b[2J\u0007shadow"}}`,
		"keys":        fmt.Sprintf(restoreOf, "deny-keys", "file://"+keys.path, `,"overwrite":true`),
		"escape":      fmt.Sprintf(restoreOf, "deny-escape", "file://"+restoreDir+"/escape.raw", `,"overwrite":true`),
		"old":         fmt.Sprintf(restoreOf, "deny-old", "file://"+oldImage.path, ""),
		"cron":        fmt.Sprintf(`{"spec_version":1,"id":"deny-cron","kind":"backup","disk":"d","source":{"uri":"nbd+unix:///?socket=/run/blockferry/vm.sock"},"repository":%q}`, "file://"+cron),
		"loot":        fmt.Sprintf(`{"spec_version":1,"id":"deny-loot","kind":"backup","disk":"d","source":{"uri":"nbd+unix:///?socket=/run/blockferry/vm.sock"},"repository":%q}`, lootRepo),
		"unknown":     `{"spec_version":1,"id":"deny-unknown","kind":"verify","backup":"01JD0000000000000000000000","repository":"tenant-z"}`,
	}
	for _, body := range denied {
		var v struct {
			ID   string `json:"id"`
			Kind string `json:"kind"`
		}
		mustJSON(t, body, &v)
		e.submit(v.Kind, v.ID, body)
	}
	for _, body := range denied {
		var v struct {
			ID string `json:"id"`
		}
		mustJSON(t, body, &v)
		e.forbidden(v.ID)
	}
	if err := w.stop(); err != nil {
		t.Fatal(err)
	}
	shadow.check(t)
	keys.check(t)
	oldImage.check(t)
	emptyDir(t, cron)
	emptyDir(t, filepath.Join(e.dir, "repository")) // nothing was backed up
	if n := s3requests.Load(); n != 0 {
		t.Errorf("the attacker's S3 endpoint got %d requests", n)
	}
	if n := nbdConns.Load(); n != 0 {
		t.Errorf("the scanned NBD port got %d connections", n)
	}
	if _, err := os.Lstat(filepath.Join(restoreDir, "deny-escape")); err == nil {
		t.Error("a denied restore created a file")
	}

	// The operator allows all of it: the same kinds of job now run.
	open, err := jobs.NewPolicy(jobs.PolicyConfig{
		Repositories:      map[string]jobs.NamedRepository{"default": {URI: e.repo}},
		DefaultRepository: "default", RepositoryURIs: true,
		Sources: []string{"file://" + images + "/*", "nbd://" + nbdAddr + "/*"},
		Targets: []string{"file://" + restoreDir + "/*"},
	})
	if err != nil {
		t.Fatal(err)
	}
	e.runnerOpts = []jobs.RunnerOption{jobs.WithPolicy(open)}
	e.startWorker("open")
	e.submit("backup", "allow-image", backupJob("allow-image", "d/vda", diskURI, ""))
	done := terminalOnly(t, e.waitEnd("allow-image", 60*time.Second), typeCompleted)
	restoreBackup := strings.Replace(restoreOf, "01JD0000000000000000000000", done.Data.Backup, 1)
	e.submit("restore", "allow-old", fmt.Sprintf(restoreBackup, "allow-old", "file://"+oldImage.path, `,"overwrite":true`))
	terminalOnly(t, e.waitEnd("allow-old", 60*time.Second), typeCompleted)
	if got := testutil.SHA256File(t, oldImage.path); got != diskSHA {
		t.Errorf("restore with overwrite: sha256 %s, want %s", got, diskSHA)
	}
	e.submit("backup", "allow-cron", fmt.Sprintf(`{"spec_version":1,"id":"allow-cron","kind":"backup","disk":"d","source":{"uri":%q},"repository":%q}`, diskURI, "file://"+cron))
	terminalOnly(t, e.waitEnd("allow-cron", 60*time.Second), typeCompleted)
	if ents, _ := os.ReadDir(cron); len(ents) == 0 {
		t.Error("an allowed repository URI was not used")
	}
	e.submit("backup", "allow-loot", fmt.Sprintf(`{"spec_version":1,"id":"allow-loot","kind":"backup","disk":"d","source":{"uri":%q},"repository":%q}`, diskURI, lootRepo))
	e.submit("backup", "allow-nbd", backupJob("allow-nbd", "scan/x", "nbd://"+nbdAddr+"/x", ""))
	deadline := time.Now().Add(30 * time.Second)
	for s3requests.Load() == 0 || nbdConns.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("allowed jobs did not reach their endpoints: S3 %d requests, NBD %d connections", s3requests.Load(), nbdConns.Load())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func mustJSON(t *testing.T, doc string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(doc), v); err != nil {
		t.Fatalf("test bug: %v: %s", err, doc)
	}
}
