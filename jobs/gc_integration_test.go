package jobs_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/blockferry/blockferry/internal/testutil"
	"github.com/blockferry/blockferry/jobs"
	"github.com/blockferry/blockferry/sinks"
	"github.com/blockferry/blockferry/sinks/repository"
)

// End-to-end tests of garbage collection (docs/FORMAT.md, "Garbage collection")
// through real backups and restores, on a file repository and on versitygw. The
// grace period is a few seconds, so that condemned chunks fall due within the
// test and the races with running backups are real. A list is only swept of
// chunks written before it, and S3 keeps modification times to the second: the
// tests let a second pass between writing chunks and condemning them.

// gcDiskSize is small: what is tested is which chunks survive, not throughput.
const gcDiskSize = 8 * mib

// gcRepo is a repository under test with the runner that backs up into it.
type gcRepo struct {
	t      *testing.T
	runner *jobs.Runner
	store  sinks.Store
	repo   *repository.Repository
	grace  time.Duration
}

func newGCRepo(t *testing.T, uri string, grace time.Duration) *gcRepo {
	t.Helper()
	ctx := context.Background()
	store, err := sinks.OpenStore(ctx, uri)
	if err != nil {
		t.Fatal(err)
	}
	repo, err := repository.Init(ctx, store, repository.InitOptions{ChunkSize: chunkSize, Compression: "zstd"})
	if err != nil {
		t.Fatal(err)
	}
	if err := repo.SetGrace(ctx, grace); err != nil {
		t.Fatal(err)
	}
	return &gcRepo{t: t, runner: jobs.NewRunner(jobs.WithDefaultRepository(uri)), store: store, repo: repo, grace: grace}
}

// nextSecond lets the store's clock move past the objects written so far.
func nextSecond() { time.Sleep(1100 * time.Millisecond) }

// untilDue waits until the condemned lists written so far are due.
func (g *gcRepo) untilDue() { time.Sleep(g.grace + 1100*time.Millisecond) }

func (g *gcRepo) prune() *repository.PruneReport {
	g.t.Helper()
	rep, err := g.repo.Prune(context.Background(), repository.PruneOptions{})
	if err != nil {
		g.t.Fatalf("prune: %v", err)
	}
	return rep
}

// check reads back and re-hashes every chunk a backup names.
func (g *gcRepo) check() {
	g.t.Helper()
	rep, err := g.repo.Check(context.Background(), repository.CheckOptions{ReadData: 1})
	if err != nil || !rep.OK {
		g.t.Fatalf("check --read-data-subset 100%%: %+v, %v", rep, err)
	}
}

// stored lists the stored chunks with their sizes.
func (g *gcRepo) stored() map[string]int64 {
	g.t.Helper()
	out := map[string]int64{}
	err := g.store.ListInfo(context.Background(), "chunks/", func(o sinks.ObjectInfo) error {
		out[filepath.Base(o.Name)] = o.Size
		return nil
	})
	if err != nil {
		g.t.Fatal(err)
	}
	return out
}

// backup runs a backup job of disk from source and returns its manifest.
func (g *gcRepo) backup(spec jobs.Spec) *repository.Manifest {
	g.t.Helper()
	spec.SpecVersion, spec.Kind = jobs.SpecVersion, jobs.KindBackup
	spec.Options.ChunkSize = jobs.ByteSize(chunkSize)
	res, err := g.runner.Run(context.Background(), spec, nil)
	if err != nil {
		g.t.Fatalf("backup %s of %s: %v", spec.ID, spec.Disk, err)
	}
	return res.Backup
}

// restored restores a backup to a file and returns the file's sha256.
func (g *gcRepo) restored(m *repository.Manifest) string {
	g.t.Helper()
	out := filepath.Join(g.t.TempDir(), "restored.raw")
	spec := jobs.Spec{SpecVersion: jobs.SpecVersion, ID: "restore-" + m.ID, Kind: jobs.KindRestore, Backup: m.ID, Target: &jobs.Endpoint{URI: "file://" + out}}
	if _, err := g.runner.Run(context.Background(), spec, nil); err != nil {
		g.t.Fatalf("restore %s (%s of %s): %v", m.ID, m.Kind, m.Disk, err)
	}
	return testutil.SHA256File(g.t, out)
}

// forget applies a retention policy to a disk's backups and forgets the rest,
// as `blockferry forget` does; it returns the forgotten ids.
func (g *gcRepo) forget(disk string, p repository.RetentionPolicy) []string {
	g.t.Helper()
	ctx := context.Background()
	list, bad, err := g.repo.ListBackups(ctx, disk)
	if err != nil || len(bad) > 0 {
		g.t.Fatalf("list %s: %v, bad %v", disk, err, bad)
	}
	decisions, err := p.Apply(list)
	if err != nil {
		g.t.Fatal(err)
	}
	var gone []string
	for _, d := range decisions {
		if !d.Keep {
			gone = append(gone, d.Backup.ID)
		}
	}
	if err := g.repo.Forget(ctx, gone); err != nil {
		g.t.Fatal(err)
	}
	return gone
}

func (g *gcRepo) forgetIDs(ids ...string) {
	g.t.Helper()
	if err := g.repo.Forget(context.Background(), ids); err != nil {
		g.t.Fatal(err)
	}
}

// gcDisk is a qcow2 image with a persistent dirty bitmap per backup, and the
// sha256 of the image at each backup.
type gcDisk struct {
	name   string
	image  string
	bitmap string // the bitmap that tracks writes since the last backup
	last   *repository.Manifest
	sums   map[string]string // backup id -> sha256 of the image then
	dir    string
	t      *testing.T
	backed int
}

func newGCDisk(t *testing.T, name string) *gcDisk {
	t.Helper()
	testutil.RequireTool(t, "qemu-io")
	testutil.RequireTool(t, "qemu-nbd")
	d := &gcDisk{name: name, dir: t.TempDir(), sums: map[string]string{}, t: t}
	d.image = filepath.Join(d.dir, "disk.qcow2")
	testutil.MakeQcow2(t, d.image, gcDiskSize)
	return d
}

// backup writes ws into the image, then backs it up: a full backup the first
// time, an incremental against the last backup after that.
func (d *gcDisk) backup(g *gcRepo, ws ...write) *repository.Manifest {
	d.t.Helper()
	cmds := make([]string, len(ws))
	for i, w := range ws {
		cmds[i] = w.cmd()
	}
	testutil.QemuIO(d.t, d.image, cmds...)
	raw := filepath.Join(d.dir, "now.raw")
	testutil.ConvertToRaw(d.t, d.image, raw)
	sum := testutil.SHA256File(d.t, raw)
	uri, stop := testutil.ServeQemuNBD(d.t, d.image, d.bitmap)
	spec := jobs.Spec{ID: fmt.Sprintf("%s-%d", strings.ReplaceAll(d.name, "/", "-"), d.backed), Disk: d.name,
		Source: &jobs.Endpoint{URI: uri, Bitmap: d.bitmap}}
	if d.last != nil {
		spec.Parent = d.last.ID
	}
	m := g.backup(spec)
	stop()
	d.backed++
	d.bitmap = fmt.Sprintf("b%d", d.backed)
	testutil.AddBitmap(d.t, d.image, d.bitmap)
	d.last, d.sums[m.ID] = m, sum
	return m
}

// whole fills chunk position i with pattern.
func whole(i int64, pattern int) write { return write{i * chunkSize, chunkSize, pattern} }

// patch writes 64 KiB into chunk position i: an incremental patches it.
func patch(i int64, pattern int) write { return write{i*chunkSize + 128<<10, 64 << 10, pattern} }

// needs is the set of chunks the backups name, in chunks and in patches.
func needs(ms ...*repository.Manifest) map[string]bool {
	out := map[string]bool{}
	for _, m := range ms {
		for c := range m.ChunkNeeds() {
			out[c] = true
		}
	}
	return out
}

// TestForgetAndPruneThroughBackups: ten backups of two disks, the second sharing
// chunks with the first; the first disk's backups are forgotten down to the last
// three and the repository pruned. Exactly the chunks that only the forgotten
// backups named are freed, every kept backup of both disks restores bit for bit,
// the repository checks, and a further prune has nothing left to do.
func TestForgetAndPruneThroughBackups(t *testing.T) {
	for name, repoURI := range repositories(t) {
		t.Run(name, func(t *testing.T) {
			g := newGCRepo(t, repoURI(t), 4*time.Second)
			a, b := newGCDisk(t, "vm1/vda"), newGCDisk(t, "vm2/vdb")
			var backups []*repository.Manifest
			for _, ws := range [][]write{
				{whole(0, 0x11), whole(1, 0x12), whole(2, 0x13), whole(3, 0x14), whole(5, 0x15)},
				{patch(1, 0x31), whole(2, 0x32)},                 // chunk 0x13 is only the full's on this disk
				{whole(3, 0x41), patch(0, 0x42)},                 // 0x14 goes, chunk 0 gets a patch
				{patch(5, 0x51), whole(6, 0x52)},                 // kept from here on
				{whole(0, 0x61)},                                 // folds chunk 0's patch away
				{patch(2, 0x71), write{7 * chunkSize, 4096, -1}}, // a patch and a zero write
			} {
				backups = append(backups, a.backup(g, ws...))
			}
			for _, ws := range [][]write{
				{whole(0, 0x11), whole(1, 0x13), whole(2, 0x81)}, // shares 0x11 and 0x13 with vm1/vda's full
				{patch(0, 0x91)},
				{whole(2, 0x92)},
				{whole(3, 0x41)}, // shares vm1/vda's chunk of its third backup
			} {
				backups = append(backups, b.backup(g, ws...))
			}
			if patched := backups[1].Stats.ChunksPatched + backups[6].Stats.ChunksPatched; patched == 0 {
				t.Fatal("no incremental patched a chunk position")
			}

			before := g.stored()
			gone := g.forget(a.name, repository.RetentionPolicy{Last: 3})
			var kept, forgotten []*repository.Manifest
			for _, m := range backups {
				if slices.Contains(gone, m.ID) {
					forgotten = append(forgotten, m)
				} else {
					kept = append(kept, m)
				}
			}
			if len(forgotten) != 3 || !slices.Contains(gone, backups[0].ID) {
				t.Fatalf("forget --keep-last 3 forgot %v of %d backups of %s", gone, len(a.sums), a.name)
			}
			keep := needs(kept...)
			var freed int64
			var onlyForgotten []string
			for c := range needs(forgotten...) {
				if !keep[c] {
					onlyForgotten = append(onlyForgotten, c)
					freed += before[c]
				}
			}
			if len(onlyForgotten) == 0 || len(onlyForgotten) == len(needs(forgotten...)) {
				t.Fatalf("%d chunks only the forgotten backups name: the disks do not share what the test needs", len(onlyForgotten))
			}

			nextSecond()
			if rep := g.prune(); rep.ChunksCondemned != len(onlyForgotten) || rep.ChunksDeleted != 0 {
				t.Fatalf("first prune: %+v; want the %d chunks only forgotten backups name condemned, none deleted", rep, len(onlyForgotten))
			}
			g.check()
			g.untilDue()
			rep := g.prune()
			if rep.ChunksDeleted != len(onlyForgotten) || rep.BytesFreed != freed || rep.ListsSwept != 1 {
				t.Fatalf("second prune: %+v; want %d chunks, %d bytes freed", rep, len(onlyForgotten), freed)
			}
			after := g.stored()
			for c, size := range before {
				if _, ok := after[c]; ok == slices.Contains(onlyForgotten, c) {
					t.Errorf("chunk %s (%d bytes): stored after the prune %v, named by a kept backup %v", c, size, ok, keep[c])
				}
			}
			st, err := g.repo.Stats(context.Background(), "")
			if err != nil {
				t.Fatal(err)
			}
			if total := sumSizes(before); st.StoredTotal != total-freed || st.Backups != len(kept) {
				t.Errorf("stats after prune: %d bytes in %d backups; want %d - %d bytes in %d", st.StoredTotal, st.Backups, total, freed, len(kept))
			}
			g.check()
			for _, m := range kept {
				d := map[string]*gcDisk{a.name: a, b.name: b}[m.Disk]
				if got := g.restored(m); got != d.sums[m.ID] {
					t.Errorf("restore of kept %s %s of %s differs from the disk then", m.Kind, m.ID, m.Disk)
				}
			}
			if rep := g.prune(); rep.ChunksDeleted != 0 || rep.ChunksCondemned != 0 || rep.ListsSwept != 0 || rep.ListsPending != 0 {
				t.Errorf("a further prune: %+v; want nothing to do", rep)
			}
		})
	}
}

func sumSizes(m map[string]int64) int64 {
	var n int64
	for _, s := range m {
		n += s
	}
	return n
}

// randomChunks makes n chunks of random data, different for each seed.
func randomChunks(seed byte, n int) [][]byte {
	rng := rand.NewChaCha8([32]byte{seed})
	out := make([][]byte, n)
	for i := range out {
		out[i] = make([]byte, chunkSize)
		rng.Read(out[i])
	}
	return out
}

// rawImage writes the chunks one after the other into a raw image and returns
// its file:// URI and sha256.
func rawImage(t *testing.T, chunks ...[]byte) (uri, sum string) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.raw")
	if err := os.WriteFile(p, slices.Concat(chunks...), 0o600); err != nil {
		t.Fatal(err)
	}
	return "file://" + p, testutil.SHA256File(t, p)
}

// TestPruneBesideRunningBackup: a rate-limited backup starts before a prune's
// mark phase. It deduplicates chunks that only a forgotten backup named (the
// prune condemns them, since the backup has not committed) and needs chunks that
// an earlier prune condemned and this one sweeps (the backup uploads them again).
// The backup completes (after a retry if the sweep took a chunk it had just
// uploaded, as a worker retries chunk_collected), restores bit for bit, and the
// repository checks, also after the next sweep.
func TestPruneBesideRunningBackup(t *testing.T) {
	for name, repoURI := range repositories(t) {
		t.Run(name, func(t *testing.T) {
			// An attempt must commit within half the grace period: the backup below
			// takes about two seconds.
			g := newGCRepo(t, repoURI(t), 8*time.Second)
			dedup, reupload := randomChunks(1, 3), randomChunks(2, 3)
			uri1, _ := rawImage(t, dedup...)
			uri2, _ := rawImage(t, reupload...)
			x1 := g.backup(jobs.Spec{ID: "x1", Disk: "vm1/vda", Source: &jobs.Endpoint{URI: uri1}})
			x2 := g.backup(jobs.Spec{ID: "x2", Disk: "vm2/vdb", Source: &jobs.Endpoint{URI: uri2}})
			g.forgetIDs(x2.ID)
			nextSecond()
			if rep := g.prune(); rep.ChunksCondemned != len(reupload) {
				t.Fatalf("prune after forgetting %s: %+v; want its %d chunks condemned", x2.ID, rep, len(reupload))
			}
			g.forgetIDs(x1.ID)
			g.untilDue()

			uri, want := rawImage(t, slices.Concat(dedup, reupload)...)
			spec := jobs.Spec{SpecVersion: jobs.SpecVersion, ID: "y", Kind: jobs.KindBackup, Disk: "vm3/vdc",
				Source: &jobs.Endpoint{URI: uri}, Options: jobs.Options{ChunkSize: jobs.ByteSize(chunkSize), Concurrency: 1, RateLimit: "2MiB"}}
			progress := jobs.NewProgress()
			done := make(chan struct{})
			var res jobs.Result
			var err error
			go func() {
				defer close(done)
				res, err = g.runner.Run(context.Background(), spec, progress)
			}()
			for progress.Snapshot().BytesDone == 0 {
				time.Sleep(10 * time.Millisecond)
			}
			rep := g.prune()
			select {
			case <-done:
				t.Fatal("the backup finished before the prune did: the race is not tested")
			default:
			}
			if rep.ListsSwept != 1 || rep.ChunksCondemned < len(dedup) {
				t.Fatalf("prune beside the backup: %+v; want the due list swept and the deduplicated chunks condemned", rep)
			}
			<-done
			if f := jobs.Classify(err); err != nil && f.Code == jobs.CodeCollected {
				t.Logf("the sweep took a chunk the backup had uploaded again: %v; retrying", err)
				res, err = g.runner.Run(context.Background(), spec, nil)
			}
			if err != nil {
				t.Fatalf("backup beside the prune: %v", err)
			}
			y := res.Backup
			if y.Stats.ChunksDeduped < len(dedup) || y.Stats.ChunksUploaded < len(reupload) {
				t.Errorf("backup stats %+v: want the forgotten chunks deduplicated and the condemned ones uploaded again", y.Stats)
			}
			g.check()
			if got := g.restored(y); got != want {
				t.Fatalf("restore of the backup that ran beside the prune differs from its disk")
			}
			g.untilDue()
			if rep := g.prune(); rep.ChunksDeleted != 0 {
				t.Errorf("the sweep after the backup committed: %+v; want nothing deleted", rep)
			}
			g.check()
			if got := g.restored(y); got != want {
				t.Fatal("restore after the last sweep differs from the disk")
			}
		})
	}
}

// pruneHelperEnv names the repository a helper process prunes until its first
// sweep delete, where it reports and waits to be killed.
const pruneHelperEnv = "BLOCKFERRY_TEST_PRUNE_UNTIL_SWEEP"

// TestHelperPruneUntilSweep is not a test: TestPruneKilledBetweenMarkAndSweep
// runs the test binary with it to have a prune process to SIGKILL.
func TestHelperPruneUntilSweep(t *testing.T) {
	uri := os.Getenv(pruneHelperEnv)
	if uri == "" {
		t.Skip("a helper process of TestPruneKilledBetweenMarkAndSweep")
	}
	ctx := context.Background()
	store, err := sinks.OpenStore(ctx, uri)
	if err != nil {
		t.Fatal(err)
	}
	repo, err := repository.Open(ctx, stopAtSweep{store}, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = repo.Prune(ctx, repository.PruneOptions{})
	t.Fatalf("prune ended (%v) instead of stopping at its sweep", err)
}

// stopAtSweep is a store whose first delete of chunks says "sweeping" on stdout
// and never returns.
type stopAtSweep struct{ sinks.Store }

func (s stopAtSweep) DeleteObjects(ctx context.Context, names []string) error {
	if len(names) > 0 && strings.HasPrefix(names[0], "chunks/") {
		fmt.Println("sweeping")
		time.Sleep(time.Hour) // killed here
	}
	return s.Store.DeleteObjects(ctx, names)
}

// TestPruneKilledBetweenMarkAndSweep: a prune process is killed with SIGKILL
// after its mark phase, before it deleted anything; the repository checks, and
// the next prune finishes the sweep without touching what a backup names.
func TestPruneKilledBetweenMarkAndSweep(t *testing.T) {
	for name, repoURI := range repositories(t) {
		t.Run(name, func(t *testing.T) {
			uri := repoURI(t)
			g := newGCRepo(t, uri, 4*time.Second)
			c := randomChunks(3, 4)
			keptURI, keptSum := rawImage(t, c[0], c[1])
			goneURI, _ := rawImage(t, c[1], c[2], c[3])
			kept := g.backup(jobs.Spec{ID: "kept", Disk: "vm1/vda", Source: &jobs.Endpoint{URI: keptURI}})
			gone := g.backup(jobs.Spec{ID: "gone", Disk: "vm1/vda", Source: &jobs.Endpoint{URI: goneURI}})
			g.forgetIDs(gone.ID)
			nextSecond()
			if rep := g.prune(); rep.ChunksCondemned != 2 {
				t.Fatalf("first prune: %+v; want the 2 chunks only the forgotten backup names condemned", rep)
			}
			g.untilDue()

			killPruneAtSweep(t, uri)
			if n := len(g.stored()); n != 4 {
				t.Fatalf("%d chunks stored after the killed prune; it was to delete nothing yet", n)
			}
			g.check()
			rep := g.prune()
			if rep.ChunksDeleted != 2 || rep.ListsSwept != 1 {
				t.Fatalf("prune after the killed one: %+v; want the 2 condemned chunks deleted", rep)
			}
			g.check()
			if got := g.restored(kept); got != keptSum {
				t.Fatal("restore of the kept backup differs from its disk")
			}
		})
	}
}

// killPruneAtSweep runs a prune in a helper process and kills it with SIGKILL
// once it has marked and is about to delete.
func killPruneAtSweep(t *testing.T, uri string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperPruneUntilSweep$", "-test.count=1")
	cmd.Env = append(os.Environ(), pruneHelperEnv+"="+uri)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	reached := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if sc.Text() == "sweeping" {
				reached <- nil
				return
			}
		}
		reached <- errors.New("the helper's output ended")
	}()
	select {
	case err = <-reached:
	case <-time.After(time.Minute):
		err = errors.New("timed out")
	}
	_ = cmd.Process.Kill() // SIGKILL
	_ = cmd.Wait()
	if err != nil {
		t.Fatalf("prune helper did not reach its sweep: %v", err)
	}
}
