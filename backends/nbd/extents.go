package nbd

import (
	"fmt"
	"slices"

	"libguestfs.org/libnbd"

	"github.com/blockferry/blockferry/backends"
)

// bitmapDirty is the flag a qemu:dirty-bitmap context sets on changed ranges.
const bitmapDirty = 1

// maxStatusDescriptors bounds the descriptors kept of one meta context's block
// status reply: 512 KiB of them, which describe at least 64 KiB. A server may
// describe less than was asked (NBD allows it), and a window that ends early is
// asked again from where it stops, so only the number of round trips depends on
// how finely the server describes the disk, never what one holds.
const maxStatusDescriptors = 1 << 16

// addStatus keeps the reply for one meta context to the block status request r,
// at most maxStatusDescriptors descriptors of it. NBD allows one reply per meta
// context and request, while libnbd passes on any number: a second one is the
// server's fault, as is every further one.
func (r *request) addStatus(name string, entries []uint32) error {
	if _, ok := r.extents[name]; ok {
		return fmt.Errorf("%w: more than one block status reply for %s to one request", errProtocol, name)
	}
	if len(entries) > 2*maxStatusDescriptors {
		entries = slices.Clone(entries[:2*maxStatusDescriptors]) // and let the rest go
	}
	r.extents[name] = entries
	return nil
}

// run is one block status extent, ending (exclusive) at end.
type run struct {
	end   int64
	flags uint32
}

// runs decodes one meta context's reply, (length, flags) pairs from start, clipped
// to end. A server may describe less than was asked, never nothing.
func runs(name string, start, end int64, entries []uint32) ([]run, error) {
	if len(entries) == 0 || len(entries)%2 != 0 {
		return nil, fmt.Errorf("nbd block status: %w: %d entries in the reply for %s", errProtocol, len(entries), name)
	}
	out := make([]run, 0, len(entries)/2)
	pos := start
	for i := 0; i < len(entries) && pos < end; i += 2 {
		if entries[i] == 0 {
			continue
		}
		pos = min(pos+int64(entries[i]), end)
		out = append(out, run{end: pos, flags: entries[i+1]})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("nbd block status: %w: the reply for %s describes nothing", errProtocol, name)
	}
	return out, nil
}

// mergeExtents combines the allocation and dirty bitmap replies for the window
// [start, start+length) into extents split at the boundaries of both. A nil reply
// means the context is not in use: without allocation nothing reads as zero,
// without a bitmap everything is dirty. The result stops where the shorter reply
// stops, and adjacent extents with the same flags are joined.
func mergeExtents(start, length int64, alloc, bitmap []uint32, allocName, bitmapName string) ([]backends.Extent, error) {
	end := start + length
	var a, b []run
	var err error
	if alloc != nil {
		if a, err = runs(allocName, start, end, alloc); err != nil {
			return nil, err
		}
		end = a[len(a)-1].end
	}
	if bitmap != nil {
		if b, err = runs(bitmapName, start, end, bitmap); err != nil {
			return nil, err
		}
		end = min(end, b[len(b)-1].end)
	}

	var out []backends.Extent
	for pos := start; pos < end; {
		next, zero, dirty := end, false, true
		if a != nil {
			for a[0].end <= pos {
				a = a[1:]
			}
			next = min(next, a[0].end)
			zero = a[0].flags&libnbd.STATE_ZERO != 0
		}
		if b != nil {
			for b[0].end <= pos {
				b = b[1:]
			}
			next = min(next, b[0].end)
			dirty = b[0].flags&bitmapDirty != 0
		}
		if n := len(out); n > 0 && out[n-1].Zero == zero && out[n-1].Dirty == dirty {
			out[n-1].Length += next - pos
		} else {
			out = append(out, backends.Extent{Start: pos, Length: next - pos, Dirty: dirty, Zero: zero})
		}
		pos = next
	}
	return out, nil
}
