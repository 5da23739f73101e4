package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/blockferry/blockferry/internal/testutil"
)

// writeCredentialsFile writes an env-file of S3 keys with mode perm.
func writeCredentialsFile(t *testing.T, path, accessKey, secretKey string, perm os.FileMode) {
	t.Helper()
	data := fmt.Sprintf("# test keys\nexport AWS_ACCESS_KEY_ID=%s\nAWS_SECRET_ACCESS_KEY=%q\n", accessKey, secretKey)
	if err := os.WriteFile(path, []byte(data), perm); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, perm); err != nil { // past the umask
		t.Fatal(err)
	}
}

// TestRepositoryCredentialsFiles: each named repository's S3 store uses the keys
// of its own credentials_file, not the worker's environment: two repositories on
// servers with different keys both work, and one whose file holds the other
// server's keys fails access_denied although the environment's keys would do.
func TestRepositoryCredentialsFiles(t *testing.T) {
	if testing.Short() {
		t.Skip("starts versitygw and a worker")
	}
	dir := t.TempDir()
	a := testutil.StartS3ServerAs(t, "key-a", "secret-a")
	b := testutil.StartS3ServerAs(t, "key-b", "secret-b")
	testutil.CreateBucket(t, a.Endpoint, a.AccessKey, a.SecretKey, "bfbucket")
	testutil.CreateBucket(t, b.Endpoint, b.AccessKey, b.SecretKey, "bfbucket")
	aEnv, bEnv := filepath.Join(dir, "a.env"), filepath.Join(dir, "b.env")
	writeCredentialsFile(t, aEnv, a.AccessKey, a.SecretKey, 0o600)
	writeCredentialsFile(t, bEnv, b.AccessKey, b.SecretKey, 0o600)
	uri := func(s *testutil.S3Server, prefix string) string {
		return "s3://bfbucket/" + prefix + "?endpoint=" + s.Endpoint + "&region=us-east-1"
	}
	config := filepath.Join(dir, "worker.yaml")
	yaml := fmt.Sprintf("repositories:\n  a: {uri: %q, credentials_file: %s}\n  b: {uri: %q, credentials_file: %s}\n  wrong: {uri: %q, credentials_file: %s}\nallow-source: [\"file://%s/*\"]\n",
		uri(a, "a"), aEnv, uri(b, "b"), bEnv, uri(a, "wrong"), bEnv, dir)
	if err := os.WriteFile(config, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(dir, "disk.raw")
	writeRandomDisk(t, disk, 2<<20)

	// The worker's environment holds server a's keys: were a credentials file
	// ignored, "wrong" would work and "b" would not.
	awsEnv := []string{"AWS_ACCESS_KEY_ID=" + a.AccessKey, "AWS_SECRET_ACCESS_KEY=" + a.SecretKey, "AWS_SESSION_TOKEN=",
		"AWS_PROFILE=", "AWS_CONFIG_FILE=/nonexistent/aws-config", "AWS_SHARED_CREDENTIALS_FILE=/nonexistent/aws-credentials",
		"AWS_EC2_METADATA_DISABLED=true"}
	dataDir := filepath.Join(dir, "data")
	url := fmt.Sprintf("nats://127.0.0.1:%d", testutil.FreePort(t))
	w := exec.Command(binary, "worker", "--config", config, "--listen", strings.TrimPrefix(url, "nats://"), "--log-level", "warn")
	w.Env = append(append(testutil.CleanEnv(), awsEnv...), "BLOCKFERRY_DATA_DIR="+dataDir)
	var log strings.Builder
	w.Stdout, w.Stderr = &log, &log
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Process.Kill(); _ = w.Wait() })

	env := append(append(testutil.CleanEnv(), awsEnv...), "BLOCKFERRY_DATA_DIR="+dataDir)
	submit := func(repo string) result {
		args := []string{"submit", "backup", "--nats-url", url, "--id", "job-" + repo, "--repository", repo,
			"--source", "file://" + disk, "--disk", "vm1/vda", "--wait"}
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			r := cli(t, env, args...)
			if r.code == 0 || strings.Contains(r.stderr, "job-"+repo) || time.Now().After(deadline) {
				return r
			}
		}
	}
	for _, repo := range []string{"a", "b"} {
		if r := submit(repo); r.code != 0 {
			t.Fatalf("backup into %s: %+v\nworker log:\n%s", repo, r, log.String())
		}
	}
	if r := submit("wrong"); r.code == 0 {
		t.Fatalf("backup into a repository with another server's keys: %+v", r)
	}
	if r := cli(t, env, "status", "--json", "--nats-url", url, "job-wrong"); !strings.Contains(r.stdout, "access_denied") {
		t.Errorf("status of the job with the wrong keys: %+v, want access_denied", r)
	}
	// The command line takes the same parameter: each repository holds its backup.
	for _, repo := range []string{uri(a, "a") + "&credentials_file=" + aEnv, uri(b, "b") + "&credentials_file=" + bEnv} {
		if ids := backupIDs(t, testutil.CleanEnv(), repo); len(ids) != 1 {
			t.Errorf("%s holds %v, want one backup", repo, ids)
		}
	}
	for _, secret := range []string{a.SecretKey, b.SecretKey} {
		if strings.Contains(log.String(), secret) {
			t.Errorf("the worker logged a secret key")
		}
	}

	// A credentials file that group or others may read is refused at start.
	if err := os.Chmod(bEnv, 0o640); err != nil {
		t.Fatal(err)
	}
	var pf policyFlags
	pf.defaultName = "default"
	if _, err := pf.policy(config, "file:///unused", nil); err == nil || !strings.Contains(err.Error(), "group or others") {
		t.Errorf("policy with a group-readable credentials file: %v", err)
	}
}
