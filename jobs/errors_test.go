package jobs

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"unicode/utf8"

	"github.com/blockferry/blockferry/backends"
	_ "github.com/blockferry/blockferry/backends/file"
	"github.com/blockferry/blockferry/internal/safe"
	"github.com/blockferry/blockferry/sinks"
	"github.com/blockferry/blockferry/sinks/repository"
	_ "github.com/blockferry/blockferry/sinks/s3"
)

// sized is a source of a given size that is never read.
type sized struct {
	backends.Source
	size int64
}

func (s sized) Size() int64 { return s.size }

// dial is how net.Dial wraps a system error.
func dial(errno syscall.Errno) error {
	return &net.OpError{Op: "dial", Net: "tcp", Err: &os.SyscallError{Syscall: "connect", Err: errno}}
}

// s3Op is how the S3 SDK's HTTP client wraps a transport error.
func s3Op(err error) error {
	return fmt.Errorf("s3://bkt/p: put %q: operation error S3: PutObject: %w", "chunks/ab/ab…",
		&url.Error{Op: "Put", URL: "https://s3.example.com/bkt/p/chunks/ab", Err: err})
}

// TestClassify has a row for each entry of the classification table (checked at
// the end), errors as the code wraps them, and system errors as Go wraps them.
func TestClassify(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	open := func(err error) func() error { return func() error { return err } }
	source := func(uri string) func() error {
		return func() error { _, err := backends.OpenSource(ctx, uri); return err }
	}
	target := func(uri string) func() error {
		return func() error { _, err := backends.OpenTarget(ctx, uri, backends.WithSize(1)); return err }
	}
	store := func(uri string) func() error {
		return func() error { _, err := sinks.OpenStore(ctx, uri); return err }
	}
	sourceSize := func(size int64) func() error {
		return func() error { return checkSourceSize(sized{size: size}, "nbd://host/export", nil, 4<<20, nil) }
	}
	const chunk = "chunk 9f86d0…"
	covered := map[int]bool{}
	for _, tc := range []struct {
		name      string
		err       func() error
		code      string
		retryable bool
	}{
		{"invalid job", open(fmt.Errorf("%w: job j1 names no repository and the worker has no default", ErrInvalid)), CodeInvalidJob, false},
		{"forbidden by the worker's policy", open(fmt.Errorf("%w: source %q is not in the worker's allow-list", ErrForbidden, "file:///etc/shadow")), CodeForbidden, false},
		{"a panic in one of the job's goroutines", open(safe.Call(func() error { panic("boom") })), CodeInternal, false},
		{"deliveries exhausted", open(fmt.Errorf("job j1: %w", ErrDeliveriesExhausted)), CodeExhausted, false},
		{"unsupported source scheme", source("ftp://host/disk"), CodeInvalidJob, false},
		{"a directory as file:// source", source("file://" + dir), CodeSourceInvalid, false},
		{"a source of 2^63-1 bytes", sourceSize(1<<63 - 1), CodeSourceInvalid, false},
		{"a directory as file:// target", target("file://" + dir), CodeTargetInvalid, false},
		{"a target in a missing directory", target("file://" + filepath.Join(dir, "none", "out.raw")), CodeTargetInvalid, false},
		{"parent not found", open(fmt.Errorf("%w: %w", ErrParentNotFound, repository.ErrBackupNotFound)), CodeParentNotFound, false},
		{"parent mismatch", open(fmt.Errorf("%w: parent p1 is a backup of disk %q", ErrParentMismatch, "vm2/vdb")), CodeParentMismatch, false},
		{"checkpoint mismatch", open(fmt.Errorf("%w: the bitmap counts from checkpoint %q, parent p1 started %q", ErrCheckpointMismatch, "c2", "c1")), CodeCheckpoint, false},
		{"no bitmap", open(fmt.Errorf("nbd x: export has no dirty bitmap %q: %w", "b1", backends.ErrNoBitmap)), CodeBitmapNotFound, false},
		{"target too small", open(fmt.Errorf("nbd x: export has 1 bytes, image needs 2: %w", backends.ErrTooSmall)), CodeTargetTooSmall, false},
		{"backup not found", open(fmt.Errorf("backup b1 in file:///r: %w", repository.ErrBackupNotFound)), CodeBackupNotFound, false},
		{"unsupported repository scheme", store("gopher://host/r"), CodeRepositoryInvalid, false},
		{"a typo in an S3 parameter", store("s3://bkt/p?endpiont=http://127.0.0.1:1"), CodeRepositoryInvalid, false},
		{"credentials in an S3 URI", store("s3://key:secret@bkt/p"), CodeRepositoryInvalid, false},
		{"a file as file:// repository", store("file://" + os.Args[0]), CodeRepositoryInvalid, false},
		{"a repository format not read", open(fmt.Errorf("file:///r: %w: repository format version 2 is not supported", repository.ErrUnsupportedFormat)), CodeRepositoryInvalid, false},
		{"no repository", open(fmt.Errorf("file:///r: %w (no config object)", sinks.ErrNoRepository)), CodeRepositoryMissing, false},
		{"access denied by the store", open(fmt.Errorf("s3://bkt: put: %w", sinks.ErrAccessDenied)), CodeAccessDenied, false},
		{"TLS refused by an NBD export", open(fmt.Errorf("nbd nbds+unix:///?socket=/s: %w (no certificate directory or PSK file is set): gnutls", backends.ErrTLS)), CodeAccessDenied, false},
		{"wrong key", open(fmt.Errorf("file:///r: %w", repository.ErrWrongKey)), CodeKey, false},
		{"key required", open(fmt.Errorf("backup b1: manifest: %w", repository.ErrKeyRequired)), CodeKey, false},
		{"verify failed on a corrupt chunk", open(fmt.Errorf("%w: %w", ErrVerifyFailed, repository.ErrCorrupt)), CodeVerifyFailed, false},
		{"corrupt chunk", open(fmt.Errorf("%s: %w: content does not match its id", chunk, repository.ErrCorrupt)), CodeCorrupt, false},
		{"an object larger than its reader allows", open(fmt.Errorf("get %q: %w: 1099511627776 bytes", chunk, sinks.ErrInvalidObject)), CodeCorrupt, false},
		{"a listing that would never end", open(fmt.Errorf("list: %w: a continuation token followed before", sinks.ErrBadAnswer)), CodeRepositoryInvalid, false},
		{"a manifest claiming an absurd disk", open(fmt.Errorf("backup b1: manifest: %w: %w", repository.ErrCorrupt, repository.CheckDiskSize(1<<62, 4<<20))), CodeCorrupt, false},
		{"a disk too large", open(repository.CheckDiskSize(2<<40, 64<<10)), CodeSourceInvalid, false},
		{"missing chunk", open(fmt.Errorf("%s: file:///r: get %q: %w", chunk, "chunks/9f/9f86d0", sinks.ErrNotFound)), CodeChunkMissing, false},
		{"cancelled", open(fmt.Errorf("read: %w", context.Canceled)), CodeCancelled, false},
		{"EACCES", open(&os.PathError{Op: "open", Path: "/srv/bf/config", Err: syscall.EACCES}), CodeAccessDenied, false},
		{"EPERM", open(&os.PathError{Op: "open", Path: "/dev/sda", Err: syscall.EPERM}), CodeAccessDenied, false},
		{"EROFS", open(&os.PathError{Op: "open", Path: "/srv/bf/chunks/ab", Err: syscall.EROFS}), CodeAccessDenied, false},
		{"ENOSPC", open(fmt.Errorf("file:///r: put %q: %w", "chunks/ab", &os.PathError{Op: "write", Path: "/r/x", Err: syscall.ENOSPC})), CodeNoSpace, false},
		{"EDQUOT", open(&os.PathError{Op: "write", Path: "/r/x", Err: syscall.EDQUOT}), CodeNoSpace, false},
		{"source unreachable", source("file://" + filepath.Join(dir, "none.raw")), CodeSourceUnreachable, false},
		{"a chunk collected by a prune beside", open(fmt.Errorf("backup b1: %w: chunk %s", repository.ErrCollected, chunk)), CodeCollected, true},
		{"an S3 endpoint that does not resolve", open(s3Op(&net.OpError{Op: "dial", Net: "tcp",
			Err: &net.DNSError{Err: "no such host", Name: "s3.exmaple.com", IsNotFound: true}})), CodeRepositoryInvalid, false},
		{"an S3 endpoint with an untrusted certificate", open(s3Op(&tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}})), CodeRepositoryInvalid, false},
		{"context deadline", open(fmt.Errorf("nbd read: %w", context.DeadlineExceeded)), CodeTimeout, true},
		{"a read deadline", open(&net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded}), CodeTimeout, true},
		{"ETIMEDOUT", open(s3Op(dial(syscall.ETIMEDOUT))), CodeTimeout, true},
		{"unexpected EOF", open(fmt.Errorf("s3://bkt: get %q: reading body: %w", "chunks/ab", io.ErrUnexpectedEOF)), CodeIO, true},
		{"ECONNRESET", open(s3Op(&net.OpError{Op: "read", Net: "tcp", Err: &os.SyscallError{Syscall: "read", Err: syscall.ECONNRESET}})), CodeIO, true},
		{"ECONNREFUSED", open(s3Op(dial(syscall.ECONNREFUSED))), CodeIO, true},
		{"ECONNABORTED", open(dial(syscall.ECONNABORTED)), CodeIO, true},
		{"EPIPE", open(&net.OpError{Op: "write", Net: "unix", Err: &os.SyscallError{Syscall: "write", Err: syscall.EPIPE}}), CodeIO, true},
		{"EIO", open(fmt.Errorf("nbd read of 65536 bytes at offset 0: %w", syscall.EIO)), CodeIO, true},
		{"EIO from a file", open(&os.PathError{Op: "read", Path: "/dev/sdb", Err: syscall.EIO}), CodeIO, true},
		{"EHOSTUNREACH", open(dial(syscall.EHOSTUNREACH)), CodeIO, true},
		{"ENETUNREACH", open(dial(syscall.ENETUNREACH)), CodeIO, true},
		{"ENETDOWN", open(dial(syscall.ENETDOWN)), CodeIO, true},
		{"a file that vanished", open(&os.PathError{Op: "open", Path: "/r/chunks/ab/x", Err: syscall.ENOENT}), CodeIO, true},
		{"os.ErrNotExist", open(fmt.Errorf("list: %w", os.ErrNotExist)), CodeIO, true},
		{"a DNS timeout", open(s3Op(&net.DNSError{Err: "i/o timeout", Name: "s3.example.com", IsTimeout: true})), CodeIO, true},
		{"a closed connection", open(&net.OpError{Op: "read", Net: "tcp", Err: net.ErrClosed}), CodeIO, true},
		{"unknown", open(errors.New("something nobody expected")), CodeInternal, true},
	} {
		err := tc.err()
		f := Classify(err)
		if err == nil || f.Code != tc.code || f.Retryable != tc.retryable || f.Message != err.Error() {
			t.Errorf("%s: %v: classified %+v, want %s (retryable %v)", tc.name, err, f, tc.code, tc.retryable)
		}
		if i := classify(err); i >= 0 {
			covered[i] = true
		}
	}
	for i, c := range classes {
		if !covered[i] {
			t.Errorf("class %d (%s) has no row in this test", i, c.code)
		}
	}
	if f := Classify(nil); f != (Failure{}) {
		t.Errorf("Classify(nil) = %+v", f)
	}
}

// TestTransient: a device request is sent again only for an error the table
// knows as retryable, wrapped or not; unknown and permanent errors end it.
func TestTransient(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("nbd read of 4096 bytes at offset 0: %w", syscall.EIO), true},
		{fmt.Errorf("read: %w", syscall.ECONNRESET), true},
		{&net.OpError{Op: "read", Err: os.ErrDeadlineExceeded}, true},
		{fmt.Errorf("write: %w", syscall.ENOSPC), false},
		{fmt.Errorf("read: %w", syscall.EPERM), false},
		{backends.ErrInvalidSource, false},
		{context.Canceled, false},
		{errors.New("something unknown"), false},
	} {
		if got := transient(c.err); got != c.want {
			t.Errorf("transient(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

// TestClassifyCutsLongMessages: an error quoting a long server answer becomes a
// Failure whose message is at most maxMessageBytes of valid UTF-8, keeps its
// start (what failed) and says that it was cut; short messages stay whole.
func TestClassifyCutsLongMessages(t *testing.T) {
	const start = "s3://bkt/p: get \"chunks/ab\": operation error S3: GetObject: "
	for _, filler := range []string{"A", "é", "€", "😀"} {
		long := start + strings.Repeat(filler, 1<<20)
		f := Classify(errors.New(long))
		if len(f.Message) > maxMessageBytes || !utf8.ValidString(f.Message) {
			t.Errorf("filler %q: message of %d bytes (valid UTF-8: %v), want at most %d", filler, len(f.Message), utf8.ValidString(f.Message), maxMessageBytes)
		}
		if !strings.HasPrefix(f.Message, start) || !strings.Contains(f.Message, "more bytes cut]") {
			t.Errorf("filler %q: message %q…%q lacks the start or the marker", filler, f.Message[:80], f.Message[len(f.Message)-40:])
		}
	}
	exact := strings.Repeat("x", maxMessageBytes)
	if f := Classify(errors.New(exact)); f.Message != exact {
		t.Errorf("a message of exactly %d bytes was changed to %d bytes", maxMessageBytes, len(f.Message))
	}
}
