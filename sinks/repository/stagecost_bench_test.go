package repository

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	czstd "github.com/DataDog/zstd"
	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"

	"github.com/blockferry/blockferry/sinks"
	"github.com/blockferry/blockferry/sinks/file"
	"github.com/blockferry/blockferry/sinks/s3"
)

// stageChunkSize is a backup's default chunk size (jobs.DefaultChunkSize).
const stageChunkSize = 4 << 20

// BenchmarkStageCost measures what each stage of a backup costs alone, in CPU
// seconds (user+sys of this process, plus the S3 server's for the PUT) per GiB of
// the sample's plaintext, on a sample of real data: deploy/scripts/bench.sh passes
// a slice of every region of its image and derives the machine's bound from these
// figures. CPU time, not wall time, because the machine is shared: a stage that is
// descheduled for a while costs no more CPU. The stores' stages also report their
// wall time with 8 uploads in flight, since a disk or a server is a resource of its
// own. One pass over the sample per run: -benchtime 1x, and -count for repeats.
//
//	BLOCKFERRY_STAGE_DATA   the sample (a file of plaintext; the benchmark skips without it)
//	BLOCKFERRY_STAGE_DIR    directory of a file store to write (default: a temporary one)
//	BLOCKFERRY_STAGE_S3     s3:// URI to PUT to (credentials from the AWS chain); none: skipped
//	BLOCKFERRY_STAGE_S3_PID the S3 server's pid, whose CPU time is added to the PUT's
func BenchmarkStageCost(b *testing.B) {
	path := os.Getenv("BLOCKFERRY_STAGE_DATA")
	if path == "" {
		b.Skip("BLOCKFERRY_STAGE_DATA names no sample")
	}
	sample, err := os.ReadFile(path)
	if err != nil {
		b.Fatal(err)
	}
	chunks := splitChunks(sample, stageChunkSize)
	plain, _ := newCodec(nil)
	b.Run("blake3", func(b *testing.B) { stageCPU(b, chunks, func(c []byte) { plain.ID(c) }) })
	benchCompressors(b, chunks)
	encrypted, _ := newCodec(&dataKeys{})
	b.Run("aes-gcm", func(b *testing.B) {
		buf := make([]byte, 0, SealedSize(stageChunkSize))
		stageCPU(b, chunks, func(c []byte) { buf = encrypted.Seal(buf, c, "chunk:x", false) })
	})
	// What the stores take: the sealed objects of the sample (zstd, plaintext envelope).
	objects := make([][]byte, len(chunks))
	for i, c := range chunks {
		objects[i] = plain.Seal(nil, c, "chunk:x", true)
	}
	b.Run("file-put", func(b *testing.B) {
		dir := os.Getenv("BLOCKFERRY_STAGE_DIR")
		if dir == "" {
			dir = b.TempDir()
		}
		st, err := file.Open(dir)
		if err != nil {
			b.Fatal(err)
		}
		stagePut(b, st, objects, len(sample), 0)
	})
	b.Run("s3-put", func(b *testing.B) {
		uri := os.Getenv("BLOCKFERRY_STAGE_S3")
		if uri == "" {
			b.Skip("BLOCKFERRY_STAGE_S3 names no bucket")
		}
		u, err := url.Parse(uri)
		if err != nil {
			b.Fatal(err)
		}
		st, err := s3.Open(context.Background(), u)
		if err != nil {
			b.Fatal(err)
		}
		pid, _ := strconv.Atoi(os.Getenv("BLOCKFERRY_STAGE_S3_PID"))
		stagePut(b, st, objects, len(sample), pid)
	})
}

// benchCompressors runs the compression the codec does (Seal: C zstd at level 1,
// stored as is when it does not pay) and the alternatives docs/PERFORMANCE.md
// compares, each reporting its ratio (compressed over plain bytes).
func benchCompressors(b *testing.B, chunks [][]byte) {
	plain, _ := newCodec(nil)
	b.Run("seal-zstd", func(b *testing.B) {
		buf := make([]byte, 0, SealedSize(stageChunkSize))
		var out int
		stageCPU(b, chunks, func(c []byte) { buf = plain.Seal(buf, c, "chunk:x", true); out += len(buf) })
		b.ReportMetric(float64(out)/float64(sampleSize(chunks))/float64(max(b.N, 1)), "ratio")
	})
	alternatives := map[string]func(dst, src []byte) []byte{
		"s2":              func(dst, src []byte) []byte { return s2.Encode(dst[:cap(dst)], src) },
		"zstd-go-fastest": goZstd(zstd.SpeedFastest),
		"zstd-go-default": goZstd(zstd.SpeedDefault),
		"zstd-c-level=-5": cZstd(-5),
		"zstd-c-level=-1": cZstd(-1),
		"zstd-c-level=3":  cZstd(3),
		"zstd-c-level=1":  cZstd(1),
	}
	for name, compress := range alternatives {
		b.Run("alt/"+name, func(b *testing.B) {
			buf := make([]byte, 0, czstd.CompressBound(stageChunkSize)+s2.MaxEncodedLen(stageChunkSize))
			var out int
			stageCPU(b, chunks, func(c []byte) { out += len(compress(buf, c)) })
			b.ReportMetric(float64(out)/float64(sampleSize(chunks))/float64(max(b.N, 1)), "ratio")
		})
	}
}

func goZstd(level zstd.EncoderLevel) func(dst, src []byte) []byte {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(level), zstd.WithEncoderConcurrency(1))
	if err != nil {
		panic(err)
	}
	return func(dst, src []byte) []byte { return enc.EncodeAll(src, dst[:0]) }
}

func cZstd(level int) func(dst, src []byte) []byte {
	ctx := czstd.NewCtx()
	return func(dst, src []byte) []byte {
		out, err := ctx.CompressLevel(dst[:cap(dst)], src, level)
		if err != nil {
			panic(err)
		}
		return out
	}
}

func splitChunks(data []byte, size int) [][]byte {
	var chunks [][]byte
	for len(data) > 0 {
		n := min(size, len(data))
		chunks = append(chunks, data[:n])
		data = data[n:]
	}
	return chunks
}

func sampleSize(chunks [][]byte) int {
	n := 0
	for _, c := range chunks {
		n += len(c)
	}
	return n
}

// stageCPU runs fn over every chunk b.N times, on one goroutine, and reports the
// process's CPU seconds per GiB of chunks.
func stageCPU(b *testing.B, chunks [][]byte, fn func(chunk []byte)) {
	before := processCPU(b)
	for b.Loop() {
		for _, c := range chunks {
			fn(c)
		}
	}
	reportPerGiB(b, "cpu-s/GiB", processCPU(b)-before, sampleSize(chunks)*b.N)
}

// stagePut stores every object b.N times with 8 uploads in flight and reports the
// CPU seconds of this process and of the server (pid; 0: none), and the wall
// seconds, per GiB of the plaintext the objects hold (plainBytes).
func stagePut(b *testing.B, st sinks.Store, objects [][]byte, plainBytes int, server int) {
	ctx := context.Background()
	prefix := fmt.Sprintf("stagecost/%d", time.Now().UnixNano())
	cpu0, srv0, t0 := processCPU(b), serverCPU(b, server), time.Now()
	run := 0
	for b.Loop() {
		run++
		work := make(chan int)
		var wg sync.WaitGroup
		var failed sync.Once
		for range 8 {
			wg.Go(func() {
				for i := range work {
					if err := st.Put(ctx, fmt.Sprintf("%s/%d/%d", prefix, run, i), objects[i]); err != nil {
						failed.Do(func() { b.Error(err) })
					}
				}
			})
		}
		for i := range objects {
			work <- i
		}
		close(work)
		wg.Wait()
	}
	wall := time.Since(t0).Seconds()
	srv := serverCPU(b, server) - srv0
	reportPerGiB(b, "cpu-s/GiB", processCPU(b)-cpu0+srv, plainBytes*b.N)
	if server != 0 {
		reportPerGiB(b, "server-cpu-s/GiB", srv, plainBytes*b.N)
	}
	reportPerGiB(b, "wall-s/GiB", wall, plainBytes*b.N)
}

func reportPerGiB(b *testing.B, unit string, seconds float64, bytes int) {
	b.ReportMetric(seconds/(float64(bytes)/(1<<30)), unit)
}

// processCPU is the user+sys time of this process so far, in seconds.
func processCPU(b *testing.B) float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// serverCPU is the user+sys time of process pid so far (0 for pid 0), in seconds,
// from /proc/PID/stat (fields 14 and 15, in USER_HZ: 100 on Linux).
func serverCPU(b *testing.B, pid int) float64 {
	if pid == 0 {
		return 0
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// The command name, in parentheses, may hold spaces: count from after it.
	fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	utime, _ := strconv.ParseFloat(fields[11], 64)
	stime, _ := strconv.ParseFloat(fields[12], 64)
	return (utime + stime) / 100
}
