package main

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/blockferry/blockferry/internal/testutil"
)

// shellQuote quotes args for /bin/sh, which script runs the command line with.
func shellQuote(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}

// underTerminal runs the binary with its standard error on a pseudo-terminal
// (script from util-linux) and its standard output in a file, and returns what
// the terminal showed and what went to the file.
func underTerminal(t *testing.T, args ...string) (terminal, stdout string) {
	t.Helper()
	script := testutil.RequireTool(t, "script")
	out := filepath.Join(t.TempDir(), "stdout")
	cmd := exec.Command(script, "-qec", shellQuote(append([]string{binary}, args...))+" >"+shellQuote([]string{out}), "/dev/null")
	cmd.Env = append(os.Environ(), "SHELL=/bin/sh")
	var term bytes.Buffer
	cmd.Stdout, cmd.Stderr = &term, &term
	if err := cmd.Run(); err != nil {
		t.Fatalf("%v under a terminal: %v: %q", args, err, term.String())
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return term.String(), string(data)
}

// oneJSONObject decodes s, which must be exactly one JSON object, into v.
func oneJSONObject(t *testing.T, s string, v any) {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(s))
	if err := dec.Decode(v); err != nil {
		t.Fatalf("stdout is not a JSON object: %v: %q", err, s)
	}
	if _, err := dec.Token(); err != io.EOF {
		t.Fatalf("stdout has more than one JSON object: %q", s)
	}
}

// TestProgressOnTerminal: backup, restore and verify draw the progress line of
// `submit --wait` on a terminal's standard error, while --json keeps standard
// output one JSON object; --quiet, or a standard error that is no terminal, gets
// no progress line.
func TestProgressOnTerminal(t *testing.T) {
	dir := t.TempDir()
	disk := filepath.Join(dir, "d.raw")
	writeRandomDisk(t, disk, 24<<20)
	repo := "file://" + filepath.Join(dir, "repo")

	first, stdout := underTerminal(t, "backup", "--json", "--chunk-size", "1MiB", "--source", "file://"+disk, "--disk", "vm1/vda", "--repository", repo)
	var b struct {
		Backup string `json:"backup"`
	}
	oneJSONObject(t, stdout, &b)
	if b.Backup == "" {
		t.Fatalf("backup --json names no backup: %q", stdout)
	}
	jobs := []struct {
		name string
		args []string
	}{
		{"backup", []string{"backup", "--json", "--source", "file://" + disk, "--disk", "vm1/vda", "--repository", repo}},
		{"restore", []string{"restore", "--json", "--repository", repo, "--backup", b.Backup, "--target", "file://" + filepath.Join(dir, "restored.raw")}},
		{"verify", []string{"verify", "--json", "--repository", repo, "--backup", b.Backup}},
	}
	for _, job := range jobs {
		t.Run(job.name, func(t *testing.T) {
			args, term := job.args, first
			if job.name != "backup" {
				var stdout string
				term, stdout = underTerminal(t, args...)
				var v map[string]any
				oneJSONObject(t, stdout, &v)
			}
			// The final line: the bar full, all 24 MiB done, a rate, no time left.
			want := "\r[" + strings.Repeat("#", 30) + "] 100.0% 24.0 MiB/24.0 MiB "
			if !strings.Contains(term, want) || !strings.Contains(term, "/s eta 0s") {
				t.Errorf("terminal shows no final progress line %q: %q", want, term)
			}
			if strings.Contains(term, "{") {
				t.Errorf("the JSON result reached the terminal: %q", term)
			}

			quiet, stdout := underTerminal(t, append(args, "--quiet")...)
			var v map[string]any
			oneJSONObject(t, stdout, &v)
			if strings.TrimSpace(quiet) != "" {
				t.Errorf("--quiet: terminal shows %q", quiet)
			}

			r := cli(t, nil, args...)
			if r.code != 0 || r.stderr != "" {
				t.Errorf("standard error no terminal: exit %d, stderr %q", r.code, r.stderr)
			}
			oneJSONObject(t, r.stdout, &v)
		})
	}
}
