package repository

import (
	"fmt"
	"sync"

	czstd "github.com/DataDog/zstd"
)

// zstdLevel is the compression level of chunks and manifests.
const zstdLevel = 1

// zstdEncoder compresses with the reference C library (frames any zstd decoder
// reads; this package decodes with klauspost/compress). Compression is what bounds
// a backup's speed on text-like data, and there the C encoder at level 1 is faster
// than the pure-Go one at its fastest and compresses a little better (figures in
// docs/PERFORMANCE.md, from BenchmarkSeal). Contexts are pooled: one is not safe
// for concurrent use.
type zstdEncoder struct {
	ctxs sync.Pool
}

// appendCompressed appends one zstd frame of src to dst. dst needs capacity for
// len(dst)+CompressBound(len(src)), or it is reallocated.
func (z *zstdEncoder) appendCompressed(dst, src []byte) []byte {
	ctx, _ := z.ctxs.Get().(czstd.Ctx)
	if ctx == nil {
		ctx = czstd.NewCtx()
	}
	defer z.ctxs.Put(ctx)
	if free := cap(dst) - len(dst); free < czstd.CompressBound(len(src)) {
		grown := make([]byte, len(dst), len(dst)+czstd.CompressBound(len(src)))
		copy(grown, dst)
		dst = grown
	}
	out, err := ctx.CompressLevel(dst[len(dst):cap(dst)], src, zstdLevel)
	if err != nil {
		// Only a bug (a bad level, a buffer too small) makes the C encoder fail.
		panic(fmt.Sprintf("zstd: %v", err))
	}
	if len(out) > 0 && &out[0] != &dst[len(dst):cap(dst)][0] {
		return append(dst, out...) // the library chose another buffer after all
	}
	return dst[:len(dst)+len(out)]
}
