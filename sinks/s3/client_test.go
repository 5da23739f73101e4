package s3

import (
	"context"
	"errors"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// TestRetryBudget: the retries of one request wait more than a minute in all
// before it fails, and not without end; every wait lies between half its step
// and its step.
func TestRetryBudget(t *testing.T) {
	if wait := minRetryWait(); wait < 60*time.Second {
		t.Errorf("the retries of a request wait at least %v: an outage of a minute fails it", wait)
	}
	r := newRetryer()
	if r.MaxAttempts() != maxAttempts {
		t.Errorf("MaxAttempts() = %d, want %d", r.MaxAttempts(), maxAttempts)
	}
	var least, most time.Duration
	for attempt := 1; attempt < r.MaxAttempts(); attempt++ {
		step := backoffStep(attempt)
		for range 20 {
			d, err := r.RetryDelay(attempt, errors.New("503"))
			if err != nil || d < step/2 || d > step {
				t.Fatalf("RetryDelay(%d) = %v, %v; want within [%v, %v]", attempt, d, err, step/2, step)
			}
		}
		least, most = least+step/2, most+step
	}
	if least != minRetryWait() || most > 3*time.Minute {
		t.Errorf("retries wait %v to %v in all; want at least %v and at most 3m", least, most, minRetryWait())
	}
}

// TestRetryable: what the retryer retries. Outages, throttling and server errors
// are; answers about the request (access denied, no such key) fail at once.
func TestRetryable(t *testing.T) {
	refused := &smithy.OperationError{ServiceID: "S3", OperationName: "PutObject", Err: &smithyhttp.RequestSendError{
		Err: &net.OpError{Op: "dial", Net: "tcp", Err: &os.SyscallError{Syscall: "connect", Err: syscall.ECONNREFUSED}},
	}}
	r := newRetryer()
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"connection refused", refused, true},
		{"503 SlowDown", sdkError(503, "SlowDown", "Please reduce your request rate.", nil), true},
		{"500 InternalError", sdkError(500, "InternalError", "", nil), true},
		{"502 without a body", sdkError(502, "", "", nil), true},
		{"409 ConditionalRequestConflict", sdkError(409, "ConditionalRequestConflict", "", nil), true},
		{"400 BadDigest", sdkError(400, "BadDigest", "The CRC32C you specified did not match the calculated checksum.", nil), true},
		{"400 XAmzContentChecksumMismatch (MinIO)", sdkError(400, "XAmzContentChecksumMismatch", "The provided 'x-amz-checksum' header does not match what was computed.", nil), true},
		{"400 InvalidArgument", sdkError(400, "InvalidArgument", "", nil), false},
		{"403 AccessDenied", sdkError(403, "AccessDenied", "Access Denied", nil), false},
		{"403 without a body", sdkError(403, "", "", nil), false},
		{"404 NoSuchKey", sdkError(404, "NoSuchKey", "", nil), false},
		{"404 NoSuchBucket", sdkError(404, "NoSuchBucket", "", nil), false},
		{"412 PreconditionFailed", sdkError(412, "PreconditionFailed", "", nil), false},
		{"cancelled", context.Canceled, false},
	} {
		if got := r.IsErrorRetryable(tc.err); got != tc.want {
			t.Errorf("%s: retryable %v, want %v", tc.name, got, tc.want)
		}
	}
}

// minRetryWait is the least the retries of one request wait in all before it
// fails: how long an outage must last to fail an operation.
func minRetryWait() time.Duration {
	var total time.Duration
	for attempt := 1; attempt < maxAttempts; attempt++ {
		total += backoffStep(attempt) / 2
	}
	return total
}
