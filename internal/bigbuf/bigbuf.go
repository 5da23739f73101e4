// Package bigbuf allocates the large, long-lived buffers of the data path (chunk
// buffers, sealed objects) so that touching them the first time costs little.
package bigbuf

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

const hugePage = 2 << 20

// Make returns a zeroed byte slice of length n and capacity c. When the slice
// spans whole 2 MiB pages the kernel is asked to back them with transparent huge
// pages (madvise MADV_HUGEPAGE, which the Go runtime no longer does for its heap):
// a first touch of a 4 KiB page costs about 10 us on the bench's VM, so a fresh
// 4 MiB buffer costs 10 ms of faults, several times what BLAKE3 or zstd spend on
// random data, and a backup's read buffers and sealed objects were 16k of its
// faults. Where the kernel offers no huge pages the advice is ignored and the
// slice is an ordinary one; either way it is Go memory, kept and freed as usual.
func Make(n, c int) []byte {
	b := make([]byte, n, c)
	if c < hugePage {
		return b
	}
	start := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	first := (start+hugePage-1)&^(hugePage-1) - start
	last := (start+uintptr(c))&^(hugePage-1) - start
	if last > first {
		_ = unix.Madvise(b[:c][first:last], unix.MADV_HUGEPAGE)
	}
	return b
}
