package main

import (
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// writeRandomDisk writes a raw disk image of size bytes that does not compress,
// so that a job on it reads, hashes and writes every chunk.
func writeRandomDisk(t *testing.T, path string, size int) {
	t.Helper()
	data := make([]byte, size)
	rand.NewChaCha8([32]byte{7}).Read(data)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestSizesTakeUnits: every size, as a flag, an environment variable or a setting
// in the config file, goes through the one parser: units are read, and NaN,
// fractions of a byte, negative and zero sizes are refused before anything runs.
func TestSizesTakeUnits(t *testing.T) {
	dir := t.TempDir()
	r := cli(t, nil, "init", "--json", "--chunk-size", "1MiB", "--repository", "file://"+filepath.Join(dir, "r1"))
	var created struct {
		ChunkSize int64 `json:"chunk_size"`
	}
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &created) != nil || created.ChunkSize != 1<<20 {
		t.Fatalf("init --chunk-size 1MiB: exit %d, %q, %q", r.code, r.stdout, r.stderr)
	}

	disk := filepath.Join(dir, "d.raw")
	writeRandomDisk(t, disk, 1<<20)
	r = cli(t, nil, "backup", "--json", "--chunk-size", "256 KiB", "--rate-limit", "1.5GiB", "--source", "file://"+disk,
		"--disk", "vm1/vda", "--repository", "file://"+filepath.Join(dir, "r2"))
	var backup struct {
		ChunkSize int64 `json:"chunk_size"`
	}
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &backup) != nil || backup.ChunkSize != 256<<10 {
		t.Fatalf("backup --chunk-size '256 KiB': exit %d, %q, %q", r.code, r.stdout, r.stderr)
	}

	conf := func(text string) string {
		p := filepath.Join(t.TempDir(), "blockferry.yaml")
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	repo := "file://" + filepath.Join(dir, "r3")
	cases := []struct {
		name string
		env  []string
		args []string
		want string
	}{
		{"decimal chunk size", nil, []string{"init", "--chunk-size", "4M", "--repository", repo}, "4000000 bytes is not a power of two"},
		{"fractional chunk size", nil, []string{"init", "--chunk-size", "1.5", "--repository", repo}, "whole number of bytes"},
		{"negative chunk size", nil, []string{"backup", "--chunk-size", "-1MiB", "--source", "file://" + disk, "--disk", "d", "--repository", repo}, "negative"},
		{"NaN rate", nil, []string{"submit", "backup", "--rate-limit", "NaN", "--disk", "d", "--source", "file://" + disk}, `"NaN" is not a byte size`},
		{"zero rate", nil, []string{"backup", "--rate-limit", "0", "--source", "file://" + disk, "--disk", "d", "--repository", repo}, "zero"},
		{"memory limit from env", []string{"BLOCKFERRY_MEMORY_LIMIT=NaN"}, []string{"worker"}, "BLOCKFERRY_MEMORY_LIMIT"},
		{"rate limit from env", []string{"BLOCKFERRY_RATE_LIMIT=-200MiB"}, []string{"worker"}, "negative"},
		{"memory limit from file", nil, []string{"worker", "--config", conf("memory-limit: 0.1KiB\n")}, "whole number of bytes"},
		{"overflow from file", nil, []string{"worker", "--config", conf("rate-limit: 9000000TiB\n")}, "too large"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			mustFail(t, cli(t, append([]string{"BLOCKFERRY_CONFIG="}, c.env...), c.args...), c.want)
		})
	}
	if _, err := os.Stat(filepath.Join(dir, "r3")); !os.IsNotExist(err) {
		t.Errorf("a refused size left a repository behind: %v", err)
	}
}
