package jobs

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"syscall"

	"github.com/blockferry/blockferry/backends"
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
	CodeSourceUnreachable = "source_unreachable"
	CodeBitmapNotFound    = "bitmap_not_found"
	CodeParentNotFound    = "parent_not_found"
	CodeParentMismatch    = "parent_mismatch"
	CodeBackupNotFound    = "backup_not_found"
	CodeRepositoryMissing = "repository_not_found"
	CodeAccessDenied      = "access_denied"
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

// classes maps sentinel errors to codes; the first match wins, so more specific
// errors come first. This is the one place that decides what a retry can fix.
var classes = []struct {
	err       error
	code      string
	retryable bool
}{
	{ErrInvalid, CodeInvalidJob, false},
	{ErrDeliveriesExhausted, CodeExhausted, false},
	{backends.ErrUnsupportedScheme, CodeInvalidJob, false},
	{ErrParentNotFound, CodeParentNotFound, false},
	{ErrParentMismatch, CodeParentMismatch, false},
	{backends.ErrNoBitmap, CodeBitmapNotFound, false},
	{backends.ErrTooSmall, CodeTargetTooSmall, false},
	{repository.ErrBackupNotFound, CodeBackupNotFound, false},
	{sinks.ErrNoRepository, CodeRepositoryMissing, false},
	{sinks.ErrAccessDenied, CodeAccessDenied, false},
	{repository.ErrWrongKey, CodeKey, false},
	{repository.ErrKeyRequired, CodeKey, false},
	{ErrVerifyFailed, CodeVerifyFailed, false},
	{repository.ErrCorrupt, CodeCorrupt, false},
	{context.Canceled, CodeCancelled, false},
	{os.ErrPermission, CodeAccessDenied, false},
	// The orchestrator exports the disk before it submits the job: an export that
	// cannot be reached at the start is a wrong URI or a torn-down export, which
	// waiting does not fix. A connection lost mid-job is an I/O error, retried.
	{backends.ErrUnreachable, CodeSourceUnreachable, false},
	{repository.ErrCollected, CodeCollected, true},
	{context.DeadlineExceeded, CodeTimeout, true},
	{os.ErrDeadlineExceeded, CodeTimeout, true},
	{io.ErrUnexpectedEOF, CodeIO, true},
	{syscall.ECONNRESET, CodeIO, true},
	{syscall.ECONNREFUSED, CodeIO, true},
	{syscall.EPIPE, CodeIO, true},
	{syscall.EIO, CodeIO, true},
	{syscall.ENOSPC, CodeIO, true},
}

// Classify turns an error into a failure code and says whether retrying may help.
// Errors it does not know are taken as transient: a bounded number of retries costs
// little, and giving up on a backup that would have succeeded costs a lot.
func Classify(err error) Failure {
	if err == nil {
		return Failure{}
	}
	f := Failure{Code: CodeInternal, Message: err.Error(), Retryable: true}
	for _, c := range classes {
		if errors.Is(err, c.err) {
			f.Code, f.Retryable = c.code, c.retryable
			return f
		}
	}
	var ne net.Error
	if errors.As(err, &ne) {
		f.Code = CodeIO
	}
	return f
}
