package jobs

import (
	"fmt"

	"github.com/blockferry/blockferry/backends"
	"github.com/blockferry/blockferry/sinks/repository"
)

// MaxDiskSize is the largest disk the engine backs up: the repository format's
// limit of 64 TiB, less at chunk sizes below 4 MiB (a backup has at most
// repository.MaxChunkPositions chunk positions: 1 TiB at 64 KiB). A larger source
// fails at once with code source_invalid, before anything is read or allocated.
const MaxDiskSize = repository.MaxDiskSize

// checkSourceSize refuses a source that no backup can hold at the chunk size the
// backup will use: a full backup uses the job's or else the repository's, an
// incremental its parent's. The engine allocates per chunk position, and an
// absurd size (a directory's, an NBD export of 2^63-1 bytes) would overflow that.
func checkSourceSize(src backends.Source, uri string, repo *repository.Repository, chunkSize int64, parent *repository.Manifest) error {
	switch {
	case parent != nil:
		chunkSize = parent.ChunkSize
	case chunkSize == 0:
		chunkSize = repo.Config().ChunkSize
	}
	if err := repository.CheckDiskSize(src.Size(), chunkSize); err != nil {
		return fmt.Errorf("source %s: %w: %w", uri, backends.ErrInvalidSource, err)
	}
	return nil
}
