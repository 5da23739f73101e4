package jobs_test

import (
	"encoding/binary"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/blockferry/blockferry/internal/testutil"
	"github.com/blockferry/blockferry/jobs"
	"github.com/blockferry/blockferry/sinks/repository"
)

// content is a qemu-io write of data that looks like data: random bytes, which zstd
// cannot shrink (stored uncompressed), or log-like text, which it can.
type content struct {
	off, length int64
	text        bool
}

// writeContent writes each content from a file of its own: qemu-io repeats a
// source file shorter than the write.
func (d *disk) writeContent(rng *rand.ChaCha8, cs ...content) {
	d.t.Helper()
	cmds := make([]string, len(cs))
	for i, c := range cs {
		data := make([]byte, c.length)
		if c.text {
			var b strings.Builder
			for n := 0; b.Len() < len(data); n++ {
				fmt.Fprintf(&b, "%07d 2026-12-05T07:%02d:%02d worker[%d]: chunk %016x stored, %d bytes\n",
					n, n/60%60, n%60, rng.Uint64()%4, rng.Uint64(), rng.Uint64()%(4<<20))
			}
			copy(data, b.String())
		} else {
			rng.Read(data)
		}
		src := filepath.Join(d.dir, fmt.Sprintf("content-%d", i))
		if err := os.WriteFile(src, data, 0o600); err != nil {
			d.t.Fatal(err)
		}
		cmds[i] = fmt.Sprintf("write -s %s %d %d", src, c.off, c.length)
	}
	testutil.QemuIO(d.t, d.image, cmds...)
}

// scattered is one small random write into each of positions, in the 64 KiB block
// block(p) of position p: an incremental patches such positions.
func scattered(positions []int, length int64, block func(p int) int64) []content {
	var cs []content
	for _, p := range positions {
		cs = append(cs, content{off: int64(p)*chunkSize + block(p)*bitmapGranularity + 1024, length: length})
	}
	return cs
}

// formatReader is docs/reader.py and a Python that has Debian's zstandard and
// cryptography modules: /usr/bin/python3 first, since a python3 earlier on PATH
// (pyenv, a virtualenv) may lack them.
func formatReader(t *testing.T) (python, script string) {
	testutil.RequireTool(t, "b3sum")
	script = filepath.Join(testutil.RepoRoot(), "docs", "reader.py")
	for _, p := range []string{"/usr/bin/python3", "python3"} {
		if exec.Command(p, "-c", "import zstandard, cryptography").Run() == nil {
			return p, script
		}
	}
	if testutil.InCI() {
		t.Fatal("python3 with the zstandard and cryptography modules is required in CI (run make setup)")
	}
	t.Skip("python3-zstandard or python3-cryptography not installed; run make setup")
	return "", ""
}

// readerRun runs docs/reader.py with args and BLOCKFERRY_KEY set to envKey (unset
// when empty), and returns its output and error.
func readerRun(t *testing.T, envKey string, args ...string) (string, error) {
	t.Helper()
	python, script := formatReader(t)
	cmd := exec.Command(python, append([]string{script}, args...)...)
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "BLOCKFERRY_KEY=") {
			cmd.Env = append(cmd.Env, e)
		}
	}
	if envKey != "" {
		cmd.Env = append(cmd.Env, "BLOCKFERRY_KEY="+envKey)
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// readerRestoreSum restores a backup with docs/reader.py and returns the sha256
// of the raw file it wrote.
func readerRestoreSum(t *testing.T, envKey string, args ...string) string {
	t.Helper()
	raw := filepath.Join(t.TempDir(), "reader.raw")
	if out, err := readerRun(t, envKey, append(args, raw)...); err != nil {
		t.Fatalf("reader.py %v: %v\n%s", args, err, out)
	}
	return testutil.SHA256File(t, raw)
}

// TestFormatReader is docs/FORMAT.md's example as a test: docs/reader.py, an
// independent reader written from the document, restores every backup blockferry
// made (unencrypted and encrypted; a full and incrementals with patches over
// patches, zero markers and zero patches; chunks compressed and stored as they
// are) to the disk as it was, lists them past names that are not manifests, and
// reads an object of several zstd frames.
func TestFormatReader(t *testing.T) {
	formatReader(t)
	for _, encrypted := range []bool{false, true} {
		name, key := "plain", ""
		if encrypted {
			name, key = "encrypted", "correct horse battery staple"
		}
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "repo")
			runner := jobs.NewRunner(jobs.WithDefaultRepository("file://"+dir), jobs.WithKey([]byte(key)))
			d := newDisk(t)
			rng := rand.NewChaCha8([32]byte{15})
			d.writeContent(rng,
				content{0, 3 * mib, true},
				content{5*mib + 4096, 2 * mib, false},
				content{12 * mib, 1 * mib, true},
				content{diskSize - 64*1024, 64 * 1024, false},
			)
			testutil.AddBitmap(t, d.image, "b1")
			sums := map[string]string{}
			full := d.backup(runner, "full", "", "")
			sums[full.ID] = d.snapshot("full")

			// Every position but 1 (now zeroes) and 8 (rewritten whole) gets one
			// block; position 2 a zero block besides, over its data.
			var few []int
			for p := range 25 {
				if p != 1 && p != 8 {
					few = append(few, p)
				}
			}
			d.write(write{1 * mib, 1 * mib, -1}, write{2*mib + 512*1024, 64 * 1024, -1})
			d.writeContent(rng, append(scattered(few, 4096, func(p int) int64 { return int64(p * 7 % 8) }),
				content{8 * mib, 1 * mib, true})...)
			testutil.AddBitmap(t, d.image, "b2")
			inc1 := d.backup(runner, "inc1", "b1", full.ID)
			sums[inc1.ID] = d.snapshot("inc1")

			// Every other position gets another block: patches over patches.
			var half []int
			for p := 0; p < 25; p += 2 {
				half = append(half, p)
			}
			d.writeContent(rng, scattered(half, 8192, func(p int) int64 { return int64((p*3 + 1) % 8) })...)
			inc2 := d.backup(runner, "inc2", "b2", inc1.ID)
			sums[inc2.ID] = d.snapshot("inc2")
			assertReaderScenario(t, full, inc1, inc2)

			// Names under backups/ that are not manifests are skipped, by the reader
			// and by blockferry.
			for _, junk := range []string{".tmp-x", "old/" + full.ID, "notes~"} {
				p := filepath.Join(dir, "backups", junk)
				os.MkdirAll(filepath.Dir(p), 0o700)
				if err := os.WriteFile(p, []byte("not a manifest"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			keyArgs := []string{}
			if encrypted {
				// The reader takes the key as blockferry does: a key file loses
				// every trailing CR and LF.
				keyFile := filepath.Join(t.TempDir(), "key")
				if err := os.WriteFile(keyFile, []byte(key+"\r\n\n"), 0o600); err != nil {
					t.Fatal(err)
				}
				keyArgs = []string{"--key-file", keyFile}
			}
			out, err := readerRun(t, "", append(keyArgs, dir)...)
			if err != nil || strings.Count(out, "\n") != 3 {
				t.Fatalf("reader.py lists: %v\n%s", err, out)
			}
			for _, m := range []*repository.Manifest{full, inc1, inc2} {
				if !strings.Contains(out, m.ID+" vm1/vda "+m.Kind) {
					t.Errorf("reader.py does not list %s %s:\n%s", m.ID, m.Kind, out)
				}
				if got := readerRestoreSum(t, "", append(keyArgs, dir, m.ID)...); got != sums[m.ID] {
					t.Errorf("reader.py restore of %s (%s): sha256 %s, want %s", m.ID, m.Kind, got, sums[m.ID])
				}
			}
			if got := restoreSum(t, runner, inc2.ID); got != sums[inc2.ID] {
				t.Errorf("blockferry restore of %s past the junk names: sha256 %s, want %s", inc2.ID, got, sums[inc2.ID])
			}

			if encrypted {
				if got := readerRestoreSum(t, key, dir, full.ID); got != sums[full.ID] {
					t.Errorf("reader.py restore with BLOCKFERRY_KEY: sha256 %s, want %s", got, sums[full.ID])
				}
				if out, err := readerRun(t, "not the right key", dir); err == nil || !strings.Contains(out, "wrong encryption key") {
					t.Errorf("reader.py with a wrong key: %v\n%s", err, out)
				}
				return
			}
			checkChunkEncodings(t, dir)
			id := splitIntoFrames(t, dir, full.Chunks[0])
			for name, sum := range map[string]string{
				"reader.py":  readerRestoreSum(t, "", dir, full.ID),
				"blockferry": restoreSum(t, runner, full.ID),
			} {
				if sum != sums[full.ID] {
					t.Errorf("%s restore with chunk %s in several zstd frames: sha256 %s, want %s", name, id, sum, sums[full.ID])
				}
			}
			// Position 5 holds random bytes, stored as they are: one flipped byte
			// leaves a valid envelope whose content does not match the id.
			flipStoredByte(t, dir, full.Chunks[5])
			if out, err := readerRun(t, "", dir, full.ID, filepath.Join(t.TempDir(), "x.raw")); err == nil ||
				!strings.Contains(out, "does not match its id") {
				t.Errorf("reader.py restore with chunk %s corrupted: %v\n%s", full.Chunks[5], err, out)
			}
		})
	}
}

// assertReaderScenario checks that the backups hold what the reader is to be
// tested on, so that the test cannot pass on a repository without it.
func assertReaderScenario(t *testing.T, full, inc1, inc2 *repository.Manifest) {
	t.Helper()
	if full.Kind != "full" || full.Chunks[3] != "" || full.Chunks[0] == "" {
		t.Fatalf("full: kind %s, chunks %q", full.Kind, full.Chunks[:4])
	}
	if inc1.Chunks[1] != "" || inc1.Stats.ChunksPatched < 20 {
		t.Fatalf("inc1: position 1 %q (want a zero marker), %d positions patched", inc1.Chunks[1], inc1.Stats.ChunksPatched)
	}
	zeroPatch := false
	for _, p := range inc1.Patches[2] {
		zeroPatch = zeroPatch || p.Chunk == ""
	}
	patchChunks := map[string]bool{}
	for _, ps := range inc1.Patches {
		for _, p := range ps {
			if p.Chunk != "" {
				patchChunks[p.Chunk] = true
			}
		}
	}
	if !zeroPatch || len(patchChunks) < 2 {
		t.Fatalf("inc1: zero patch in position 2: %v; %d patch chunks, want several", zeroPatch, len(patchChunks))
	}
	layered := 0 // positions whose patches refer to chunks of both incrementals
	for _, ps := range inc2.Patches {
		seen := map[string]bool{}
		for _, p := range ps {
			seen[p.Chunk] = true
		}
		if len(seen) > 1 {
			layered++
		}
	}
	if layered < 10 {
		t.Fatalf("inc2: %d positions with patches of both incrementals, want every other one", layered)
	}
}

// checkChunkEncodings checks that an unencrypted repository holds chunks of both
// encodings, zstd and stored as they are.
func checkChunkEncodings(t *testing.T, dir string) {
	t.Helper()
	seen := map[byte]int{}
	filepath.WalkDir(filepath.Join(dir, "chunks"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil || len(data) < 2 || data[0] != 1 {
			t.Fatalf("chunk %s: %v, %d bytes, not a plain envelope", p, err, len(data))
		}
		seen[data[1]]++
		return nil
	})
	if seen[0] == 0 || seen[1] == 0 {
		t.Fatalf("chunks by compression byte: %v, want both 0 and 1", seen)
	}
}

// splitIntoFrames rewrites a zstd chunk of an unencrypted repository as two zstd
// frames with a skippable frame between them, which the format allows, and
// returns its id.
func splitIntoFrames(t *testing.T, dir, id string) string {
	t.Helper()
	p := filepath.Join(dir, "chunks", id[:2], id)
	obj, err := os.ReadFile(p)
	if err != nil || obj[1] != 1 {
		t.Fatalf("chunk %s: %v, not zstd", id, err)
	}
	dec, _ := zstd.NewReader(nil)
	defer dec.Close()
	plain, err := dec.DecodeAll(obj[2:], nil)
	if err != nil {
		t.Fatal(err)
	}
	enc, _ := zstd.NewWriter(nil)
	out := enc.EncodeAll(plain[:len(plain)/3], []byte{1, 1})
	out = binary.LittleEndian.AppendUint32(out, 0x184D2A53)
	out = binary.LittleEndian.AppendUint32(out, 5)
	out = append(out, "skip!"...)
	out = enc.EncodeAll(plain[len(plain)/3:], out)
	if err := os.WriteFile(p, out, 0o600); err != nil {
		t.Fatal(err)
	}
	return id
}

// flipStoredByte flips the last byte of a chunk an unencrypted repository stores
// uncompressed.
func flipStoredByte(t *testing.T, dir, id string) {
	t.Helper()
	p := filepath.Join(dir, "chunks", id[:2], id)
	obj, err := os.ReadFile(p)
	if err != nil || obj[1] != 0 {
		t.Fatalf("chunk %s: %v, not stored uncompressed", id, err)
	}
	obj[len(obj)-1] ^= 0x40
	if err := os.WriteFile(p, obj, 0o600); err != nil {
		t.Fatal(err)
	}
}
