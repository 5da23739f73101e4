package jobs

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/blockferry/blockferry/backends"
	"github.com/blockferry/blockferry/sinks/repository"
)

// What an incremental whose chain is broken does (Options.OnBrokenChain).
const (
	// OnBrokenChainFull takes a full backup instead, deduplicated against the
	// repository: it reads the whole disk but uploads only what is not stored.
	OnBrokenChainFull = "full"
	// OnBrokenChainFail fails the job, permanently, naming the reason.
	OnBrokenChainFail = "fail"
)

// Why an incremental's chain is broken (Manifest.FallbackReason).
const (
	// FallbackBitmapMissing: the source has no dirty bitmap of the job's name
	// (the VM was restarted without it, QEMU dropped an inconsistent bitmap).
	FallbackBitmapMissing = "bitmap_missing"
	// FallbackParentMissing: the parent is not in the repository (forgotten).
	FallbackParentMissing = "parent_missing"
	// FallbackDiskResized: the disk's size differs from the parent's.
	FallbackDiskResized = "disk_resized"
	// FallbackCheckpointMismatch: the checkpoint the bitmap counts from
	// (since_checkpoint) is not the one the parent started.
	FallbackCheckpointMismatch = "checkpoint_mismatch"
)

// ErrCheckpointMismatch: an incremental's bitmap counts from another checkpoint
// than the one its parent started; its backup could not restore the disk.
var ErrCheckpointMismatch = errors.New("checkpoint does not match the parent's")

// validCheckpointName accepts the names of checkpoints (and bitmaps) a job may
// give: at most as long as an id, no NUL, no slash.
func validCheckpointName(name string) bool {
	return len(name) <= repository.MaxIDLength && !strings.ContainsAny(name, "\x00/")
}

// brokenChain is why an incremental cannot be taken against its parent: the
// reason a fallback full records and the error the job fails with otherwise.
type brokenChain struct {
	reason string
	err    error
}

// chainStart is what a backup job is taken against once its chain is checked:
// the open source, the parent (nil for a full backup) and, for a full backup that
// stands in for a broken incremental, why.
type chainStart struct {
	src      backends.Source
	parent   *repository.Manifest
	fallback string
	// chunkSize is the chunk size the backup takes when its job names none: a
	// fallback full takes its would-be parent's, so that its chunks are the
	// parent's wherever the disk did not change, and deduplicate.
	chunkSize int64
}

// startChain loads the parent of the backup s describes and opens its source,
// checking the chain between them: the parent exists, is a backup of the same
// disk at the source's size, started the checkpoint the bitmap counts from, and
// the source has the bitmap. A broken chain makes a full backup, or fails the
// job, as s.Options.OnBrokenChain says. A parent of another disk always fails:
// that is a wrong job, not a broken chain.
func (r *Runner) startChain(ctx context.Context, repo *repository.Repository, s Spec) (chainStart, error) {
	if s.Parent == "" {
		src, err := r.openSource(ctx, s.Source)
		return chainStart{src: src}, err
	}
	// The parent is checked before the source is opened, so that a bad parent is
	// reported as such even when the source is gone.
	parent, broken, err := loadParent(ctx, repo, s)
	if err != nil {
		return chainStart{}, err
	}
	failing := s.Options.OnBrokenChain == OnBrokenChainFail
	if broken != nil && failing {
		return chainStart{}, broken.err
	}
	var src backends.Source
	if broken == nil {
		src, broken, err = r.openIncrementalSource(ctx, s, parent)
		if err != nil {
			return chainStart{}, err
		}
	}
	if broken == nil {
		return chainStart{src: src, parent: parent}, nil
	}
	if failing {
		if src != nil {
			src.Close()
		}
		return chainStart{}, broken.err
	}
	if src == nil { // a full backup reads no bitmap; a source opened with one serves as well
		if src, err = r.openSource(ctx, &Endpoint{URI: s.Source.URI}); err != nil {
			return chainStart{}, err
		}
	}
	start := chainStart{src: src, fallback: broken.reason}
	if parent != nil {
		start.chunkSize = parent.ChunkSize
	}
	return start, nil
}

// loadParent reads the parent s names and checks what can be checked without
// the source: that it exists, is of the same disk and started the checkpoint s's
// bitmap counts from.
func loadParent(ctx context.Context, repo *repository.Repository, s Spec) (*repository.Manifest, *brokenChain, error) {
	parent, err := repo.Manifest(ctx, s.Parent)
	if errors.Is(err, repository.ErrBackupNotFound) {
		return nil, &brokenChain{FallbackParentMissing, fmt.Errorf("%w: %w (%s)", ErrParentNotFound, err, FallbackParentMissing)}, nil
	}
	if err != nil {
		return nil, nil, err
	}
	if parent.Disk != s.Disk {
		return nil, nil, fmt.Errorf("%w: parent %s is a backup of disk %q, not %q", ErrParentMismatch, parent.ID, parent.Disk, s.Disk)
	}
	if s.SinceCheckpoint != "" && s.SinceCheckpoint != parent.Checkpoint {
		return parent, &brokenChain{FallbackCheckpointMismatch, fmt.Errorf(
			"%w (%s): the bitmap counts from checkpoint %q, parent %s started %q",
			ErrCheckpointMismatch, FallbackCheckpointMismatch, s.SinceCheckpoint, parent.ID, cmp.Or(parent.Checkpoint, "none"))}, nil
	}
	return parent, nil, nil
}

// openIncrementalSource opens s's source with its bitmap and checks it against
// parent. A source it returns with a broken chain is open and has the bitmap.
func (r *Runner) openIncrementalSource(ctx context.Context, s Spec, parent *repository.Manifest) (backends.Source, *brokenChain, error) {
	src, err := r.openSource(ctx, s.Source)
	if errors.Is(err, backends.ErrNoBitmap) {
		return nil, &brokenChain{FallbackBitmapMissing, fmt.Errorf("%w (%s)", err, FallbackBitmapMissing)}, nil
	}
	if err != nil {
		return nil, nil, err
	}
	if src.Size() != parent.Size {
		return src, &brokenChain{FallbackDiskResized, fmt.Errorf("%w (%s): parent %s has size %d, the disk now has %d",
			ErrParentMismatch, FallbackDiskResized, parent.ID, parent.Size, src.Size())}, nil
	}
	return src, nil, nil
}

// WithFallbackObserver is told the reason of every backup that completed as a
// full backup in place of an incremental whose chain was broken, for metrics.
func WithFallbackObserver(fn func(reason string)) RunnerOption {
	return func(c *runnerConfig) { c.onFallback = fn }
}
