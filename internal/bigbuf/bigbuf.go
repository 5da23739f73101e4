// Package bigbuf allocates the large, long-lived buffers of the data path (chunk
// buffers, sealed objects) so that touching them the first time costs little.
package bigbuf

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	smallPage = 4 << 10
	hugePage  = 2 << 20
)

// Make returns a zeroed byte slice of length n and capacity c. A first touch of a
// 4 KiB page costs about 10 us on the bench's VM (a trap into a paravirtualised
// kernel), so a fresh 4 MiB buffer costs 10 ms of faults, several times what
// BLAKE3 or zstd spend on 4 MiB of random data; a backup's read buffers and sealed
// objects were 16k of its 19k faults. So when the slice is at least 2 MiB, its
// 2 MiB-aligned middle is advised to be backed by transparent huge pages
// (MADV_HUGEPAGE, which the Go runtime no longer asks for its heap) and the whole
// slice is faulted in by one madvise(MADV_POPULATE_WRITE) call. Kernels without
// either ignore the advice, and the slice is an ordinary one; either way it is Go
// memory, kept and freed as usual. An advised range may split the heap's mapping
// in two or three in the kernel's view (neighbouring advised ranges merge again),
// so the mappings stay within a few per 2 MiB of heap; the advice stays on the
// range when the runtime later reuses it, which only lets other objects there be
// huge pages too.
func Make(n, c int) []byte {
	b := make([]byte, n, c)
	if c < hugePage {
		return b
	}
	all := b[:c]
	start := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	first := (start+hugePage-1)&^(hugePage-1) - start
	last := (start+uintptr(c))&^(hugePage-1) - start
	if last > first {
		_ = unix.Madvise(all[first:last], unix.MADV_HUGEPAGE)
	}
	// Then the whole slice is faulted in by one call instead of a trap per page:
	// the middle as huge pages, the head and tail (a Go allocation is aligned to
	// 8 KiB, not 2 MiB: up to half of a 4 MiB buffer) as small ones. Pages already
	// there are left as they are; kernels before 5.14 refuse the advice.
	if head := (start+smallPage-1)&^(smallPage-1) - start; head < uintptr(c) {
		_ = unix.Madvise(all[head:], unix.MADV_POPULATE_WRITE)
	}
	return b
}
