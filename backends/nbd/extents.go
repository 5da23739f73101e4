package nbd

import (
	"fmt"

	"libguestfs.org/libnbd"

	"github.com/blockferry/blockferry/backends"
)

// bitmapDirty is the flag a qemu:dirty-bitmap context sets on changed ranges.
const bitmapDirty = 1

// run is one block status extent, ending (exclusive) at end.
type run struct {
	end   int64
	flags uint32
}

// runs decodes one meta context's reply, (length, flags) pairs from start, clipped
// to end. A server may describe less than was asked, never nothing.
func runs(name string, start, end int64, entries []uint32) ([]run, error) {
	if len(entries) == 0 || len(entries)%2 != 0 {
		return nil, fmt.Errorf("nbd block status: bad reply for %s (%d entries)", name, len(entries))
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
		return nil, fmt.Errorf("nbd block status: empty reply for %s", name)
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
