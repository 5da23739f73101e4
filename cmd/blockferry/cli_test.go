package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/blockferry/blockferry/internal/testutil"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "blockferry-cli")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "blockferry")
	if out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput(); err != nil {
		os.Stderr.Write(out)
		panic(err)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type result struct {
	stdout, stderr string
	code           int
}

func cli(t *testing.T, env []string, args ...string) result {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("running %v: %v", args, err)
	}
	return r
}

// mustFail checks the contract for bad input: non-zero exit, one line on stderr
// naming the problem, nothing on stdout.
func mustFail(t *testing.T, r result, want string) {
	t.Helper()
	if r.code == 0 {
		t.Fatalf("exit 0; stdout %q", r.stdout)
	}
	line := strings.TrimSuffix(r.stderr, "\n")
	if strings.Contains(line, "\n") || !strings.HasPrefix(line, "blockferry: ") {
		t.Errorf("stderr is not one line: %q", r.stderr)
	}
	if !strings.Contains(strings.ToLower(line), strings.ToLower(want)) {
		t.Errorf("stderr %q does not say %q", line, want)
	}
}

func backupIDs(t *testing.T, env []string, repo string) []string {
	t.Helper()
	r := cli(t, env, "ls", "--json", "--repository", repo)
	if r.code != 0 {
		t.Fatalf("ls: %s", r.stderr)
	}
	var out struct {
		Backups []struct {
			Backup string `json:"backup"`
		} `json:"backups"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
		t.Fatalf("ls --json: %v: %q", err, r.stdout)
	}
	var ids []string
	for _, b := range out.Backups {
		ids = append(ids, b.Backup)
	}
	return ids
}

func TestCLIBackupRestoreAndBadInput(t *testing.T) {
	testutil.RequireTool(t, "qemu-img")
	dir := t.TempDir()
	image := filepath.Join(dir, "d.qcow2")
	testutil.MakeQcow2(t, image, 8<<20)
	testutil.QemuIO(t, image, "write -P 7 1M 2M")
	testutil.AddBitmap(t, image, "b1")
	raw := filepath.Join(dir, "d.raw")
	testutil.ConvertToRaw(t, image, raw)
	uri, stop := testutil.ServeQemuNBD(t, image, "b1")
	defer stop()
	repo := "file://" + filepath.Join(dir, "repo")

	r := cli(t, nil, "backup", "--json", "--source", uri, "--disk", "vm1/vda", "--repository", repo)
	if r.code != 0 {
		t.Fatalf("backup: %s", r.stderr)
	}
	var b struct {
		Backup string `json:"backup"`
		Stats  struct {
			BytesRead int64 `json:"bytes_read"`
		} `json:"stats"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &b); err != nil || b.Backup == "" || b.Stats.BytesRead == 0 {
		t.Fatalf("backup --json: %v %q", err, r.stdout)
	}
	out := filepath.Join(dir, "restored.raw")
	if r := cli(t, nil, "restore", "--json", "--repository", repo, "--backup", b.Backup, "--target", "file://"+out); r.code != 0 {
		t.Fatalf("restore: %s", r.stderr)
	}
	if testutil.SHA256File(t, out) != testutil.SHA256File(t, raw) {
		t.Fatal("restored image differs")
	}
	if r := cli(t, nil, "verify", "--json", "--repository", repo, "--backup", b.Backup); r.code != 0 || !strings.Contains(r.stdout, `"chunks_checked"`) {
		t.Fatalf("verify: %+v", r)
	}

	cases := []struct {
		name string
		args []string
		want string
	}{
		{"socket that does not exist", []string{"--source", "nbd+unix:///?socket=" + filepath.Join(dir, "nope.sock"), "--disk", "vm1/vda"}, "unreachable"},
		// A broken chain fails with --on-broken-chain fail; without, it makes a full (below).
		{"unknown bitmap", []string{"--source", uri, "--disk", "vm1/vda", "--bitmap", "nope", "--parent", b.Backup, "--on-broken-chain", "fail"}, `bitmap "nope"`},
		{"missing parent", []string{"--source", uri, "--disk", "vm1/vda", "--bitmap", "b1", "--parent", "01JDNOTTHERE", "--on-broken-chain", "fail"}, "parent backup not found"},
		{"parent of another disk", []string{"--source", uri, "--disk", "vm9/vdz", "--bitmap", "b1", "--parent", b.Backup}, `disk "vm1/vda"`},
		{"bitmap without parent", []string{"--source", uri, "--disk", "vm1/vda", "--bitmap", "b1"}, "parent"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			mustFail(t, cli(t, nil, append([]string{"backup", "--repository", repo}, c.args...)...), c.want)
		})
	}
	if ids := backupIDs(t, nil, repo); len(ids) != 1 || ids[0] != b.Backup {
		t.Errorf("after failed backups ls shows %v, want only %s", ids, b.Backup)
	}
	fb := cli(t, nil, "backup", "--json", "--repository", repo, "--source", uri, "--disk", "vm1/vda", "--bitmap", "nope", "--parent", b.Backup)
	var fallback struct {
		Kind   string `json:"kind"`
		Reason string `json:"fallback_reason"`
	}
	if err := json.Unmarshal([]byte(fb.stdout), &fallback); fb.code != 0 || err != nil || fallback.Kind != "full" || fallback.Reason != "bitmap_missing" {
		t.Errorf("incremental with a missing bitmap: exit %d, %v, %q; want a full backup saying bitmap_missing", fb.code, err, fb.stdout)
	}

	t.Run("s3", func(t *testing.T) {
		endpoint, ak, sk := testutil.StartS3(t)
		testutil.CreateBucket(t, endpoint, ak, sk, "bkt")
		env := []string{"AWS_ACCESS_KEY_ID=" + ak, "AWS_SECRET_ACCESS_KEY=" + sk, "AWS_REGION=us-east-1"}
		s3repo := "s3://bkt/bf?endpoint=" + endpoint + "&region=us-east-1"
		if r := cli(t, env, "backup", "--source", uri, "--disk", "vm1/vda", "--repository", s3repo); r.code != 0 {
			t.Fatalf("backup to s3: %s", r.stderr)
		}
		mustFail(t, cli(t, env, "backup", "--source", uri, "--disk", "vm1/vda", "--repository",
			"s3://no-such-bucket/bf?endpoint="+endpoint+"&region=us-east-1"), "no-such-bucket")
		badEnv := []string{"AWS_ACCESS_KEY_ID=" + ak, "AWS_SECRET_ACCESS_KEY=wrong-secret", "AWS_REGION=us-east-1"}
		mustFail(t, cli(t, badEnv, "backup", "--source", uri, "--disk", "vm1/vda", "--repository", s3repo), "access denied")
		if ids := backupIDs(t, env, s3repo); len(ids) != 1 {
			t.Errorf("s3 repository lists %v, want one backup", ids)
		}
	})
}

// TestConfigPrecedence: flag over environment over file over default, seen through
// which repository `ls` tries to open.
func TestConfigPrecedence(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "blockferry.yaml")
	if err := os.WriteFile(conf, []byte("repository: "+filepath.Join(dir, "from-file")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := func(kv ...string) []string { return kv }
	cases := []struct {
		name string
		env  []string
		args []string
		want string
	}{
		{"default", nil, nil, "--repository is required"},
		{"file", env("BLOCKFERRY_CONFIG=" + conf), nil, "from-file"},
		{"env over file", env("BLOCKFERRY_CONFIG="+conf, "BLOCKFERRY_REPOSITORY="+filepath.Join(dir, "from-env")), nil, "from-env"},
		{"flag over env", env("BLOCKFERRY_CONFIG="+conf, "BLOCKFERRY_REPOSITORY="+filepath.Join(dir, "from-env")),
			[]string{"--repository", filepath.Join(dir, "from-flag")}, "from-flag"},
		{"--config flag", nil, []string{"--config", conf}, "from-file"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := cli(t, append([]string{"BLOCKFERRY_REPOSITORY=", "BLOCKFERRY_CONFIG="}, c.env...), append([]string{"ls"}, c.args...)...)
			mustFail(t, r, c.want)
		})
	}
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("repositry: x\n"), 0o600)
	mustFail(t, cli(t, nil, "ls", "--config", bad), `unknown setting "repositry"`)
}
