package s3

import (
	"errors"
	"fmt"
	"net/http"

	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/smithy-go"

	"github.com/blockferry/blockferry/sinks"
)

// storeError carries a one-line message of our own while matching both the
// sentinel it stands for and the SDK error behind it with errors.Is/As.
type storeError struct {
	msg  string
	kind error
	err  error
}

func (e *storeError) Error() string { return e.msg }

func (e *storeError) Unwrap() []error {
	if e.err == nil {
		return []error{e.kind}
	}
	return []error{e.kind, e.err}
}

// errorCode returns the S3 error code and HTTP status of an SDK error, either of
// which may be missing: responses to HEAD have no body, hence no code.
func errorCode(err error) (code string, status int) {
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) {
		code = apiErr.ErrorCode()
	}
	var respErr *awshttp.ResponseError
	if errors.As(err, &respErr) {
		status = respErr.HTTPStatusCode()
	}
	return code, status
}

// accessDeniedCodes are the S3 error codes for rejected credentials or missing
// permissions. Not all come with status 403: versitygw answers an unknown access
// key with 404 XAdminUserNotFound.
var accessDeniedCodes = map[string]bool{
	"AccessDenied":          true,
	"InvalidAccessKeyId":    true,
	"SignatureDoesNotMatch": true,
	"ExpiredToken":          true,
	"InvalidToken":          true,
	"TokenRefreshRequired":  true,
	"XAdminUserNotFound":    true,
}

// wrap turns an SDK error from operation op on object name into the sinks sentinel
// it means, with a message that says what happened in one line. Errors that mean
// none of them are wrapped unchanged.
func (s *Store) wrap(op, name string, err error) error {
	what := op
	if name != "" {
		what = fmt.Sprintf("%s %q", op, name)
	}
	code, status := errorCode(err)
	detail := func() string {
		var apiErr smithy.APIError
		if errors.As(err, &apiErr) && apiErr.ErrorMessage() != "" && apiErr.ErrorMessage() != code {
			return fmt.Sprintf("%s: %s", code, apiErr.ErrorMessage())
		}
		if code != "" {
			return code
		}
		return fmt.Sprintf("HTTP %d", status)
	}
	typed := func(kind error, format string, args ...any) error {
		return &storeError{msg: fmt.Sprintf(format, args...), kind: kind, err: err}
	}
	switch {
	case code == "NoSuchBucket":
		return typed(sinks.ErrNoRepository, "%s: bucket %q does not exist", s.name, s.bucket)
	case accessDeniedCodes[code] || status == http.StatusForbidden:
		return typed(sinks.ErrAccessDenied, "%s: %s: access denied (%s)", s.name, what, detail())
	case code == "NoSuchKey" || code == "NotFound" || (code == "" && status == http.StatusNotFound):
		return typed(sinks.ErrNotFound, "%s: %s: %v", s.name, what, sinks.ErrNotFound)
	case code == "PreconditionFailed" || code == "ConditionalRequestConflict" || status == http.StatusPreconditionFailed:
		return typed(sinks.ErrExists, "%s: %s: %v", s.name, what, sinks.ErrExists)
	case status == http.StatusMovedPermanently:
		// AWS answers 301 (without a body on HEAD) when the bucket lives in another
		// region than the one we sign for, and says which in a header.
		var respErr *awshttp.ResponseError
		if errors.As(err, &respErr) && respErr.Response != nil {
			if r := respErr.Response.Header.Get("X-Amz-Bucket-Region"); r != "" {
				return fmt.Errorf("%s: %s: bucket %q is in region %s; add region=%s to the URI: %w", s.name, what, s.bucket, r, r, err)
			}
		}
	}
	return fmt.Errorf("%s: %s: %w", s.name, what, err)
}
