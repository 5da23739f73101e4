// Package overlay keeps the writes to a read-only device in a local file, so that
// a backup served over NBD can be written to (a VM booted from it) while the
// backup itself never changes.
//
// An overlay is two files:
//
//	FILE      a sparse raw image of the whole disk; blocks written through the
//	          overlay hold their data, every other block is a hole
//	FILE.map  one JSON line, {"format":"blockferry-overlay","version":1,
//	          "backup":ID,"size":N,"block_size":4096}, then one bit per block of
//	          FILE (bit k%8 of byte k/8, least significant first): set when block
//	          k holds data in FILE, clear when it reads from the backup
//
// The disk as the overlay shows it is, block by block, FILE where the map's bit
// is set and the backup elsewhere; qemu reads FILE as a raw image. The map is
// written (to FILE.map.tmp, then renamed) on every flush and when the overlay
// closes, after FILE is synced, so a crash loses at most the writes since the
// last flush, as with a disk cache.
package overlay

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/blockferry/blockferry/internal/nbdserver"
)

// BlockSize is the overlay's granularity: a write that covers part of a block
// first reads the rest of it.
const BlockSize = 4096

const mapFormat = "blockferry-overlay"

type header struct {
	Format    string `json:"format"`
	Version   int    `json:"version"`
	Backup    string `json:"backup"`
	Size      int64  `json:"size"`
	BlockSize int64  `json:"block_size"`
}

// Overlay is a writable device over a read-only base. It implements
// nbdserver.Device, ExtentLister and Writer.
type Overlay struct {
	base    nbdserver.Device
	hdr     header
	data    *os.File
	mapPath string

	mu      sync.RWMutex // writers exclusive: a partial block is read, then written
	written []uint64     // bit per block
	dirty   bool         // map changed since the last flush
}

// Open opens the overlay at path for backup over base, creating it when it does
// not exist. An existing overlay of another backup or size is refused.
func Open(path, backup string, base nbdserver.Device) (*Overlay, error) {
	hdr := header{Format: mapFormat, Version: 1, Backup: backup, Size: base.Size(), BlockSize: BlockSize}
	o := &Overlay{base: base, hdr: hdr, mapPath: path + ".map", written: make([]uint64, (blocks(hdr.Size)+63)/64)}
	raw, err := os.ReadFile(o.mapPath)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if _, err := os.Stat(path); err == nil {
			return nil, fmt.Errorf("overlay %s exists but its map %s does not", path, o.mapPath)
		}
		o.dirty = true
	case err != nil:
		return nil, fmt.Errorf("overlay map: %w", err)
	default:
		if _, err := os.Stat(path); err != nil {
			return nil, fmt.Errorf("overlay map %s exists but its data file does not: %w", o.mapPath, err)
		}
		if err := o.load(raw); err != nil {
			return nil, fmt.Errorf("overlay map %s: %w", o.mapPath, err)
		}
	}
	if o.data, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600); err != nil {
		return nil, fmt.Errorf("overlay: %w", err)
	}
	// Two servers writing one overlay would each keep their own map.
	if err := unix.Flock(int(o.data.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		o.data.Close()
		return nil, fmt.Errorf("overlay %s is in use by another process: %w", path, err)
	}
	if err := o.data.Truncate(hdr.Size); err != nil {
		o.data.Close()
		return nil, fmt.Errorf("overlay: %w", err)
	}
	if err := o.Flush(context.Background()); err != nil {
		o.data.Close()
		return nil, err
	}
	return o, nil
}

func blocks(size int64) int64 { return (size + BlockSize - 1) / BlockSize }

// load reads an existing map, which must be of this backup and size.
func (o *Overlay) load(raw []byte) error {
	line, bits, ok := bytes.Cut(raw, []byte("\n"))
	var h header
	if !ok || json.Unmarshal(line, &h) != nil || h.Format != mapFormat || h.Version != 1 {
		return errors.New("not a blockferry overlay map")
	}
	if h != o.hdr {
		return fmt.Errorf("made for backup %s (%d bytes, blocks of %d), not backup %s (%d bytes)", h.Backup, h.Size, h.BlockSize, o.hdr.Backup, o.hdr.Size)
	}
	if int64(len(bits)) != (blocks(h.Size)+7)/8 {
		return fmt.Errorf("%d bytes of bitmap, want %d", len(bits), (blocks(h.Size)+7)/8)
	}
	for i, b := range bits {
		o.written[i/8] |= uint64(b) << (8 * (i % 8))
	}
	return nil
}

// Size is the size of the disk.
func (o *Overlay) Size() int64 { return o.hdr.Size }

func (o *Overlay) isWritten(block int64) bool { return o.written[block/64]&(1<<(block%64)) != 0 }

func (o *Overlay) markWritten(from, to int64) {
	for b := from; b < to; b++ {
		o.written[b/64] |= 1 << (b % 64)
	}
	o.dirty = true
}

// ReadAt reads the disk as the overlay shows it.
func (o *Overlay) ReadAt(ctx context.Context, p []byte, off int64) error {
	o.mu.RLock()
	defer o.mu.RUnlock()
	return o.read(ctx, p, off)
}

// read reads runs of blocks from the file or the base, whichever holds them.
func (o *Overlay) read(ctx context.Context, p []byte, off int64) error {
	for len(p) > 0 {
		inFile := o.isWritten(off / BlockSize)
		n := o.run(off, int64(len(p)), inFile)
		var err error
		if inFile {
			_, err = o.data.ReadAt(p[:n], off)
		} else {
			err = o.base.ReadAt(ctx, p[:n], off)
		}
		if err != nil {
			return err
		}
		p, off = p[n:], off+n
	}
	return nil
}

// run is the length of the run from off (at most limit) whose blocks are all
// written or all not.
func (o *Overlay) run(off, limit int64, written bool) int64 {
	end := (off/BlockSize + 1) * BlockSize
	for end < off+limit && o.isWritten(end/BlockSize) == written {
		end += BlockSize
	}
	return min(end, off+limit) - off
}

// WriteAt writes p at off into the overlay; p is not kept.
func (o *Overlay) WriteAt(ctx context.Context, p []byte, off int64) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	start := off / BlockSize * BlockSize
	end := min((off+int64(len(p))+BlockSize-1)/BlockSize*BlockSize, o.hdr.Size)
	if start != off || end != off+int64(len(p)) {
		// Whole blocks go to the file: the rest of a partial one comes first
		// from wherever it reads from now.
		buf := make([]byte, end-start)
		if err := o.read(ctx, buf, start); err != nil {
			return fmt.Errorf("overlay: read for a partial block: %w", err)
		}
		copy(buf[off-start:], p)
		p = buf
	}
	if _, err := o.data.WriteAt(p, start); err != nil {
		return fmt.Errorf("overlay: %w", err)
	}
	o.markWritten(start/BlockSize, blocks(end))
	return nil
}

// Zero makes a range read as zeroes: whole blocks become holes in the file.
func (o *Overlay) Zero(ctx context.Context, off, length int64) error {
	first := (off + BlockSize - 1) / BlockSize * BlockSize
	last := (off + length) / BlockSize * BlockSize
	if off+length == o.hdr.Size {
		last = off + length
	}
	if first >= last { // within one block
		return o.WriteAt(ctx, make([]byte, length), off)
	}
	if first > off {
		if err := o.WriteAt(ctx, make([]byte, first-off), off); err != nil {
			return err
		}
	}
	if last < off+length {
		if err := o.WriteAt(ctx, make([]byte, off+length-last), last); err != nil {
			return err
		}
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if err := unix.Fallocate(int(o.data.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, first, last-first); err != nil {
		return fmt.Errorf("overlay: punch hole: %w", err)
	}
	o.markWritten(first/BlockSize, blocks(last))
	return nil
}

// Flush syncs the file and then writes the map.
func (o *Overlay) Flush(context.Context) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if err := o.data.Sync(); err != nil {
		return fmt.Errorf("overlay: %w", err)
	}
	if !o.dirty {
		return nil
	}
	line, _ := json.Marshal(o.hdr)
	buf := append(line, '\n')
	for i := range (blocks(o.hdr.Size) + 7) / 8 {
		buf = append(buf, byte(o.written[i/8]>>(8*(i%8))))
	}
	tmp := o.mapPath + ".tmp"
	if err := writeSynced(tmp, buf); err != nil {
		return fmt.Errorf("overlay map: %w", err)
	}
	if err := os.Rename(tmp, o.mapPath); err != nil {
		return fmt.Errorf("overlay map: %w", err)
	}
	o.dirty = false
	return nil
}

func writeSynced(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	return errors.Join(err, f.Sync(), f.Close())
}

// Close flushes the overlay and closes its file.
func (o *Overlay) Close() error {
	return errors.Join(o.Flush(context.Background()), o.data.Close())
}

// Extents are the base's, with the written blocks as data, in at most limit
// extents.
func (o *Overlay) Extents(ctx context.Context, off, length int64, limit int) ([]nbdserver.Extent, error) {
	o.mu.RLock()
	defer o.mu.RUnlock()
	lister, _ := o.base.(nbdserver.ExtentLister)
	var out []nbdserver.Extent
	for end := min(off+length, o.hdr.Size); off < end && len(out) < limit; {
		inFile := o.isWritten(off / BlockSize)
		n := o.run(off, end-off, inFile)
		if inFile || lister == nil {
			out = append(out, nbdserver.Extent{Length: n})
			off += n
			continue
		}
		base, err := lister.Extents(ctx, off, n, limit-len(out))
		if err != nil {
			return nil, err
		}
		// What the base leaves of the run is asked for again next round.
		progressed := false
		for _, e := range base {
			if e.Length <= 0 || n == 0 || len(out) == limit {
				break
			}
			e.Length = min(e.Length, n)
			out = append(out, e)
			off, n, progressed = off+e.Length, n-e.Length, true
		}
		if !progressed {
			out = append(out, nbdserver.Extent{Length: n})
			off += n
		}
	}
	return out, nil
}
