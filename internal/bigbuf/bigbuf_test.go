package bigbuf

import (
	"bufio"
	"fmt"
	"os"
	"strings"
	"testing"
	"unsafe"
)

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
