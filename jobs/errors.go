package jobs

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"unicode/utf8"

	"github.com/blockferry/blockferry/backends"
	"github.com/blockferry/blockferry/internal/safe"
	"github.com/blockferry/blockferry/sinks"
	"github.com/blockferry/blockferry/sinks/repository"
)

// ErrParentNotFound: the parent of an incremental backup is not in the repository.
var ErrParentNotFound = errors.New("parent backup not found")

// ErrDeliveriesExhausted: every delivery of a job ended without an outcome (the
// workers that took it died or missed their heartbeats).
var ErrDeliveriesExhausted = errors.New("job deliveries exhausted")

// Failure is a classified error, as it goes into a failed event.
type Failure struct {
	Code      string `json:"code"`
	Message   string `json:"message"`
	Retryable bool   `json:"retryable"`
}

// Error codes of failed events (docs/JOBS.md).
const (
	CodeInvalidJob        = "invalid_job"
	CodeForbidden         = "forbidden"
	CodeSourceUnreachable = "source_unreachable"
	CodeSourceInvalid     = "source_invalid"
	CodeTargetInvalid     = "target_invalid"
	CodeBitmapNotFound    = "bitmap_not_found"
	CodeParentNotFound    = "parent_not_found"
	CodeParentMismatch    = "parent_mismatch"
	CodeCheckpoint        = "checkpoint_mismatch"
	CodeBackupNotFound    = "backup_not_found"
	CodeChunkMissing      = "chunk_missing"
	CodeRepositoryMissing = "repository_not_found"
	CodeRepositoryInvalid = "repository_invalid"
	CodeAccessDenied      = "access_denied"
	CodeNoSpace           = "no_space"
	CodeKey               = "encryption_key"
	CodeCorrupt           = "corrupt_data"
	CodeVerifyFailed      = "verify_failed"
	CodeTargetTooSmall    = "target_too_small"
	CodeCancelled         = "cancelled"
	CodeExhausted         = "deliveries_exhausted"
	CodeTimeout           = "timeout"
	CodeIO                = "io_error"
	CodeCollected         = "chunk_collected"
	CodeInternal          = "internal"
)

// class is one row of the classification table: the errors match picks, and
// what they are.
type class struct {
	match     func(error) bool
	code      string
	retryable bool
}

// is matches errors that wrap target.
func is(target error) func(error) bool {
	return func(err error) bool { return errors.Is(err, target) }
}

// as matches errors that wrap one of type T.
func as[T error](err error) bool {
	var t T
	return errors.As(err, &t)
}

// classes is the one place that decides what a retry can fix. The first match
// wins, so more specific errors come first. Whatever a retry cannot fix is
// permanent here, with a code that says what to fix: a wrong request, a source,
// target or repository that is not what the job says, missing or damaged data, a
// full disk. Only what may pass by itself (timeouts, lost connections, I/O
// errors) is retried.
var classes = []class{
	{is(ErrInvalid), CodeInvalidJob, false},
	{is(ErrForbidden), CodeForbidden, false},
	{is(ErrDeliveriesExhausted), CodeExhausted, false},
	// A panic is a bug that the same input meets again on every retry.
	{is(safe.ErrPanic), CodeInternal, false},
	{is(backends.ErrUnsupportedScheme), CodeInvalidJob, false},
	{is(backends.ErrInvalidSource), CodeSourceInvalid, false},
	{is(backends.ErrInvalidTarget), CodeTargetInvalid, false},
	{is(ErrParentNotFound), CodeParentNotFound, false},
	{is(ErrParentMismatch), CodeParentMismatch, false},
	{is(ErrCheckpointMismatch), CodeCheckpoint, false},
	{is(backends.ErrNoBitmap), CodeBitmapNotFound, false},
	{is(backends.ErrTooSmall), CodeTargetTooSmall, false},
	{is(repository.ErrBackupNotFound), CodeBackupNotFound, false},
	{is(sinks.ErrInvalidLocation), CodeRepositoryInvalid, false},
	{is(repository.ErrUnsupportedFormat), CodeRepositoryInvalid, false},
	{is(sinks.ErrNoRepository), CodeRepositoryMissing, false},
	{is(sinks.ErrAccessDenied), CodeAccessDenied, false},
	// A device that refused the worker's TLS credentials (or wants TLS the URI
	// does not ask for) refuses them again: the settings or the URI are to fix.
	{is(backends.ErrTLS), CodeAccessDenied, false},
	{is(repository.ErrWrongKey), CodeKey, false},
	{is(repository.ErrKeyRequired), CodeKey, false},
	{is(ErrVerifyFailed), CodeVerifyFailed, false},
	{is(repository.ErrCorrupt), CodeCorrupt, false},
	{is(sinks.ErrInvalidObject), CodeCorrupt, false},
	// A store server that broke its protocol breaks it again on a retry.
	{is(sinks.ErrBadAnswer), CodeRepositoryInvalid, false},
	// Not wrapped in ErrCorrupt, a disk too large is a source's (a manifest that
	// claims one is corrupt, above).
	{is(repository.ErrDiskTooLarge), CodeSourceInvalid, false},
	// The one object a job reads that may be missing without a sentinel of its
	// own is a chunk a backup names: verify reports it as missing, restore fails.
	{is(sinks.ErrNotFound), CodeChunkMissing, false},
	{is(context.Canceled), CodeCancelled, false},
	{is(os.ErrPermission), CodeAccessDenied, false},
	{is(syscall.EROFS), CodeAccessDenied, false},
	// A full disk or quota does not free itself within the retries' minutes, and
	// each retry reads the source again.
	{is(syscall.ENOSPC), CodeNoSpace, false},
	{is(syscall.EDQUOT), CodeNoSpace, false},
	// The orchestrator exports the disk before it submits the job: an export that
	// cannot be reached at the start is a wrong URI or a torn-down export, which
	// waiting does not fix. A connection lost mid-job is an I/O error, retried.
	{is(backends.ErrUnreachable), CodeSourceUnreachable, false},
	{is(repository.ErrCollected), CodeCollected, true},
	// Errors of Go's own network stack come from the S3 store (libnbd reports
	// the NBD side): an endpoint whose name does not resolve, or whose
	// certificate is not trusted, is a repository location to fix.
	{dnsNotFound, CodeRepositoryInvalid, false},
	{as[*tls.CertificateVerificationError], CodeRepositoryInvalid, false},
	{is(context.DeadlineExceeded), CodeTimeout, true},
	{is(os.ErrDeadlineExceeded), CodeTimeout, true},
	{is(syscall.ETIMEDOUT), CodeTimeout, true},
	{is(io.ErrUnexpectedEOF), CodeIO, true},
	{is(syscall.ECONNRESET), CodeIO, true},
	{is(syscall.ECONNREFUSED), CodeIO, true},
	{is(syscall.ECONNABORTED), CodeIO, true},
	{is(syscall.EPIPE), CodeIO, true},
	{is(syscall.EIO), CodeIO, true},
	{is(syscall.EHOSTUNREACH), CodeIO, true},
	{is(syscall.ENETUNREACH), CodeIO, true},
	{is(syscall.ENETDOWN), CodeIO, true},
	// Sources, targets and repositories that do not exist have sentinels of their
	// own (above); a bare "no such file" is one that vanished under a listing, a
	// prune running beside.
	{is(os.ErrNotExist), CodeIO, true},
	{as[net.Error], CodeIO, true},
}

// dnsNotFound matches a host name that does not resolve (NXDOMAIN), unlike a
// resolver that failed or timed out.
func dnsNotFound(err error) bool {
	var de *net.DNSError
	return errors.As(err, &de) && de.IsNotFound
}

// Classify turns an error into a failure code and says whether retrying may help.
// Errors it does not know are taken as transient: a bounded number of retries costs
// little, and giving up on a backup that would have succeeded costs a lot.
func Classify(err error) Failure {
	if err == nil {
		return Failure{}
	}
	f := Failure{Code: CodeInternal, Message: cutMessage(err.Error()), Retryable: true}
	if c := classify(err); c >= 0 {
		f.Code, f.Retryable = classes[c].code, classes[c].retryable
	}
	return f
}

// maxMessageBytes bounds a Failure's message. Errors can quote what a server,
// a device or a stored object said (an S3 error body, a name from a listing),
// and the message is copied into events and the job's status, whose messages
// NATS limits: a long message would cost memory at each copy and could make
// the outcome unpublishable. The start of a message says what failed.
const maxMessageBytes = 4 << 10

// cutMessage is msg cut to at most maxMessageBytes, at a character boundary,
// with a marker that says how much was cut.
func cutMessage(msg string) string {
	if len(msg) <= maxMessageBytes {
		return msg
	}
	const room = 40 // for the marker
	cut := maxMessageBytes - room
	for cut > 0 && !utf8.RuneStart(msg[cut]) {
		cut--
	}
	return fmt.Sprintf("%s… [%d more bytes cut]", msg[:cut], len(msg)-cut)
}

// transient says whether a failed request to a device may succeed when sent
// again at once: an error the table knows as retryable. An error it does not know
// is left to the attempt's retry (Classify takes it as transient), not resent.
func transient(err error) bool {
	c := classify(err)
	return c >= 0 && classes[c].retryable
}

// classify is the index of the first class err matches, -1 for none.
func classify(err error) int {
	for i, c := range classes {
		if c.match(err) {
			return i
		}
	}
	return -1
}
