package testutil

import "runtime"

// Allocated runs f and returns the bytes the process allocated meanwhile: what a
// test of hostile input bounds (a crafted object, a server's reply).
func Allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}
