// Command synthrepo writes a synthetic repository for benchmarks of listing and
// garbage collection (deploy/scripts/bench-gc.sh): backups of many disks whose
// manifests name chunks as a chain of incrementals would, each backup replacing
// a few positions of its disk's previous one. Chunks are tiny (a restore of
// these backups is meaningless); what is measured is the work per manifest and
// per chunk object.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/blockferry/blockferry/sinks"
	_ "github.com/blockferry/blockferry/sinks/file"
	"github.com/blockferry/blockferry/sinks/repository"
	_ "github.com/blockferry/blockferry/sinks/s3"
)

func main() {
	uri := flag.String("repository", "", "where to create the repository (file:// or s3://)")
	disks := flag.Int("disks", 20, "disks")
	backups := flag.Int("backups", 1000, "backups in all, taken round-robin over the disks")
	positions := flag.Int("positions", 256, "chunk positions per disk")
	changed := flag.Int("changed", 8, "positions each backup after a disk's first replaces")
	flag.Parse()
	if *uri == "" || *disks < 1 || *positions < *changed {
		log.Fatal("synthrepo: -repository is required; -positions must be at least -changed")
	}
	if err := generate(context.Background(), *uri, *disks, *backups, *positions, *changed); err != nil {
		log.Fatalf("synthrepo: %v", err)
	}
}

const chunkSize = 4 << 20

func generate(ctx context.Context, uri string, disks, backups, positions, changed int) error {
	store, err := sinks.OpenStore(ctx, uri)
	if err != nil {
		return err
	}
	repo, err := repository.Init(ctx, store, repository.InitOptions{ChunkSize: chunkSize, Compression: "none"})
	if err != nil {
		return err
	}
	last := make([][]string, disks) // each disk's latest chunk list
	base := time.Now().UTC().Add(-time.Duration(backups) * time.Hour)
	chunks := 0
	for i := range backups {
		d := i % disks
		fresh := changed
		if last[d] == nil {
			last[d], fresh = make([]string, positions), positions
		}
		next := append([]string(nil), last[d]...)
		ids, err := putChunks(ctx, repo, fmt.Sprintf("backup %d", i), fresh)
		if err != nil {
			return err
		}
		for k, id := range ids {
			next[(i/disks*changed+k)%positions] = id
		}
		chunks += fresh
		started := base.Add(time.Duration(i) * time.Hour)
		m := &repository.Manifest{ID: fmt.Sprintf("01SYNTH%05d%014d", d, i), Disk: fmt.Sprintf("vm-%02d/vda", d),
			Kind: "incremental", Started: started, Completed: started.Add(time.Minute),
			Size: int64(positions) * chunkSize, ChunkSize: chunkSize, Chunks: next}
		if fresh == positions {
			m.Kind = "full"
		}
		if err := repo.PutManifest(ctx, m); err != nil {
			return err
		}
		last[d] = next
	}
	fmt.Printf("%d backups of %d disks, %d chunks\n", backups, disks, chunks)
	return nil
}

// putChunks stores n distinct small chunks, 32 at a time.
func putChunks(ctx context.Context, repo *repository.Repository, tag string, n int) ([]string, error) {
	ids := make([]string, n)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(32)
	for k := range ids {
		g.Go(func() error {
			res, err := repo.PutChunk(gctx, []byte(fmt.Sprintf("%s chunk %d", tag, k)), false)
			ids[k] = res.ID.String()
			return err
		})
	}
	return ids, g.Wait()
}
