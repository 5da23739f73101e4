package repository

import (
	"context"
	"errors"
	"fmt"

	"github.com/blockferry/blockferry/sinks"
)

// Size limits of the format (docs/FORMAT.md). A disk's size and chunk size bound
// everything a backup of it holds, so a reader can tell how large a manifest may
// legitimately be from its size and chunk_size fields, before it reads the rest.
const (
	// MaxDiskSize is the largest disk one backup may hold: 64 TiB, the ceiling of
	// VHDX and about that of VMDK (62 TB). An NBD export or a file that reports
	// more is refused before anything is allocated for it.
	MaxDiskSize = 64 << 40
	// MaxChunkPositions bounds the chunk positions of one backup: MaxDiskSize at
	// 4 MiB chunks, blockferry's default chunk size. At a smaller chunk size the largest disk is smaller
	// in proportion (1 TiB at 64 KiB), so that a manifest never holds more than
	// 16 Mi entries.
	MaxChunkPositions = MaxDiskSize / (4 << 20)
	// MaxPatchesPerPosition is the most patches one chunk position may have in a
	// manifest or checkpoint.
	MaxPatchesPerPosition = 64
)

// ErrDiskTooLarge: a disk is larger than one backup may hold at its chunk size
// (see MaxDiskSize and MaxChunkPositions).
var ErrDiskTooLarge = errors.New("disk too large for a backup")

// CheckDiskSize reports whether a disk of size bytes fits one backup at chunkSize.
// Whoever allocates per chunk position checks it first: ChunkCount of an absurd
// size (an NBD export of 2^63-1 bytes) overflows.
func CheckDiskSize(size, chunkSize int64) error {
	switch {
	case size < 0:
		return fmt.Errorf("%w: negative size %d", ErrDiskTooLarge, size)
	case chunkSize <= 0:
		return fmt.Errorf("chunk size %d is not positive", chunkSize)
	case size > MaxDiskSize:
		return fmt.Errorf("%w: %d bytes, more than the %d (64 TiB) a backup may hold", ErrDiskTooLarge, size, int64(MaxDiskSize))
	case ChunkCount(size, chunkSize) > MaxChunkPositions:
		return fmt.Errorf("%w: %d bytes at a chunk size of %d make %d chunk positions, more than the %d a backup may have: use a chunk size of at least %d",
			ErrDiskTooLarge, size, chunkSize, ChunkCount(size, chunkSize), MaxChunkPositions, minChunkSizeFor(size))
	}
	return nil
}

// minChunkSizeFor is the smallest valid chunk size at which a disk of size bytes
// (at most MaxDiskSize) fits MaxChunkPositions.
func minChunkSizeFor(size int64) int64 {
	c := int64(MinChunkSize)
	for ChunkCount(size, c) > MaxChunkPositions && c < MaxChunkSize {
		c *= 2
	}
	return c
}

// Largest stored objects, by kind (docs/FORMAT.md, "Size limits"). A reader
// refuses a larger object before reading it, so what is planted in a store (or
// what a server claims) costs at most what a genuine object of the kind does;
// writers refuse to write one.
const (
	// MaxChunkObject: a chunk of MaxChunkSize stored as it is, in the encrypted
	// envelope (1 + 12 bytes of header, 1 of compression, 16 of tag), with room.
	MaxChunkObject = MaxChunkSize + 64
	// MaxMetadataObject bounds manifests, checkpoints, condemned lists and pins.
	// The largest manifest blockferry writes, MaxChunkPositions chunk ids, is
	// about 1.1 GiB of JSON and stored compressed to about half that.
	MaxMetadataObject = 1 << 30
	// MaxIndexObject: an index entry is a manifest's header fields, at most
	// headerBudget of JSON, stored uncompressed.
	MaxIndexObject = headerBudget + 64
	// MaxSmallObject bounds the config and the garbage collector's settings.
	MaxSmallObject = 64 << 10
)

// getObject reads object name of at most limit bytes from store, into buf's
// capacity when it fits. An object the store calls invalid (larger than limit,
// or not a file) is corrupt repository content: a permanent error.
func getObject(ctx context.Context, store sinks.Store, name string, buf []byte, limit int64) ([]byte, error) {
	obj, err := sinks.GetInto(ctx, store, name, buf, limit)
	if errors.Is(err, sinks.ErrInvalidObject) {
		return nil, fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	return obj, err
}

// checkObjectSize refuses to write an object its readers would refuse.
func checkObjectSize(name string, obj []byte, limit int64) error {
	if int64(len(obj)) > limit {
		return fmt.Errorf("%s: %d bytes stored, more than the %d a reader accepts", name, len(obj), limit)
	}
	return nil
}
