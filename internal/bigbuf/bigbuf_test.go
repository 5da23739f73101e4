package bigbuf

import (
	"bufio"
	"fmt"
	"os"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestMakeFaultsTheBufferIn checks that the whole buffer is resident when Make
// returns, head and tail included, so that filling it takes no page faults. It
// runs first: memory the other tests freed would be resident already.
func TestMakeFaultsTheBufferIn(t *testing.T) {
	probe := make([]byte, 1<<20)
	if err := unix.Madvise(probe, unix.MADV_POPULATE_WRITE); err != nil {
		t.Skipf("the kernel does not populate on advice: %v", err)
	}
	b := Make(0, 4<<20+64<<10) // a sealed chunk's size: not a multiple of 2 MiB
	resident := make([]byte, (cap(b)+smallPage-1)/smallPage)
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(unsafe.SliceData(b))),
		uintptr(cap(b)), uintptr(unsafe.Pointer(unsafe.SliceData(resident)))); errno != 0 {
		t.Fatalf("mincore: %v", errno)
	}
	for i, r := range resident {
		if r&1 == 0 {
			t.Fatalf("page %d of %d is not resident after Make", i, len(resident))
		}
	}
}

func TestMakeIsAPlainZeroedSlice(t *testing.T) {
	for _, tc := range []struct{ n, c int }{{0, 0}, {10, 100}, {0, 5 << 20}, {4 << 20, 4 << 20}, {1 << 20, 9 << 20}} {
		b := Make(tc.n, tc.c)
		if len(b) != tc.n || cap(b) != tc.c {
			t.Fatalf("Make(%d, %d): len %d cap %d", tc.n, tc.c, len(b), cap(b))
		}
		for i, v := range b[:cap(b)] {
			if v != 0 {
				t.Fatalf("Make(%d, %d): byte %d is %d", tc.n, tc.c, i, v)
			}
		}
	}
}

// TestMakeAsksForHugePages checks that the kernel took the advice: the mapping
// holding a large buffer's aligned middle is eligible for transparent huge pages.
func TestMakeAsksForHugePages(t *testing.T) {
	mode, err := os.ReadFile("/sys/kernel/mm/transparent_hugepage/enabled")
	if err != nil || strings.Contains(string(mode), "[never]") {
		t.Skip("no transparent huge pages on this kernel")
	}
	b := Make(8<<20, 8<<20)
	start := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	middle := (start + hugePage - 1) &^ (hugePage - 1)
	eligible, err := thpEligible(middle)
	if err != nil {
		t.Fatal(err)
	}
	if !eligible {
		t.Fatalf("the mapping at %#x is not eligible for huge pages after Make", middle)
	}
	b[0] = 1 // keep b alive until here
}

// thpEligible reads /proc/self/smaps for the mapping holding addr.
func thpEligible(addr uintptr) (bool, error) {
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		return false, err
	}
	defer f.Close()
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		var lo, hi uintptr
		if n, _ := fmt.Sscanf(line, "%x-%x ", &lo, &hi); n == 2 {
			in = lo <= addr && addr < hi
			continue
		}
		if in && strings.HasPrefix(line, "THPeligible:") {
			return strings.TrimSpace(strings.TrimPrefix(line, "THPeligible:")) == "1", nil
		}
	}
	return false, fmt.Errorf("no mapping holds %#x: %v", addr, sc.Err())
}
