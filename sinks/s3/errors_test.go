package s3

import (
	"errors"
	"net/http"
	"strings"
	"testing"

	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/blockferry/blockferry/sinks"
)

// sdkError is an error as the SDK returns it for an HTTP answer with status and,
// unless code is empty (answers to HEAD have no body), an S3 error code.
func sdkError(status int, code, message string, header http.Header) error {
	var inner error = errors.New("http response without body")
	if code != "" {
		inner = &smithy.GenericAPIError{Code: code, Message: message}
	}
	resp := &http.Response{StatusCode: status, Header: header}
	return &smithy.OperationError{ServiceID: "S3", OperationName: "GetObject", Err: &awshttp.ResponseError{
		ResponseError: &smithyhttp.ResponseError{Response: &smithyhttp.Response{Response: resp}, Err: inner},
	}}
}

// TestWrap: how SDK errors map to the sinks sentinels, and the one-line messages
// that say so; the SDK error stays reachable behind each.
func TestWrap(t *testing.T) {
	s := &Store{bucket: "bkt", name: "s3://bkt/p"}
	sentinels := []error{sinks.ErrNoRepository, sinks.ErrAccessDenied, sinks.ErrNotFound, sinks.ErrExists}
	for _, tc := range []struct {
		err  error
		kind error  // nil: none of the sentinels
		msg  string // the whole message, or its start when it ends in "…"
	}{
		{sdkError(404, "NoSuchBucket", "The specified bucket does not exist", nil), sinks.ErrNoRepository,
			`s3://bkt/p: bucket "bkt" does not exist`},
		{sdkError(403, "AccessDenied", "Access Denied", nil), sinks.ErrAccessDenied,
			`s3://bkt/p: get "config": access denied (AccessDenied: Access Denied)`},
		{sdkError(403, "SignatureDoesNotMatch", "SignatureDoesNotMatch", nil), sinks.ErrAccessDenied,
			`s3://bkt/p: get "config": access denied (SignatureDoesNotMatch)`},
		{sdkError(403, "", "", nil), sinks.ErrAccessDenied, `s3://bkt/p: get "config": access denied (HTTP 403)`},
		// versitygw's unknown access key: a 404 that is about credentials.
		{sdkError(404, "XAdminUserNotFound", "", nil), sinks.ErrAccessDenied,
			`s3://bkt/p: get "config": access denied (XAdminUserNotFound)`},
		{sdkError(404, "NoSuchKey", "The specified key does not exist.", nil), sinks.ErrNotFound,
			`s3://bkt/p: get "config": object not found`},
		{sdkError(404, "NotFound", "Not Found", nil), sinks.ErrNotFound, `s3://bkt/p: get "config": object not found`},
		{sdkError(404, "", "", nil), sinks.ErrNotFound, `s3://bkt/p: get "config": object not found`},
		{sdkError(412, "PreconditionFailed", "", nil), sinks.ErrExists, `s3://bkt/p: get "config": object already exists`},
		{sdkError(409, "ConditionalRequestConflict", "", nil), sinks.ErrExists, `s3://bkt/p: get "config": object already exists`},
		{sdkError(412, "", "", nil), sinks.ErrExists, `s3://bkt/p: get "config": object already exists`},
		{sdkError(301, "", "", http.Header{"X-Amz-Bucket-Region": {"eu-west-3"}}), nil,
			`s3://bkt/p: get "config": bucket "bkt" is in region eu-west-3; add region=eu-west-3 to the URI: …`},
		{sdkError(301, "", "", nil), nil, `s3://bkt/p: get "config": operation error S3: GetObject, …`},
		{sdkError(500, "InternalError", "We encountered an internal error.", nil), nil, `s3://bkt/p: get "config": operation error S3: GetObject, …`},
	} {
		got := s.wrap("get", "config", tc.err)
		for _, k := range sentinels {
			if errors.Is(got, k) != (k == tc.kind) {
				t.Errorf("%v: errors.Is(%v) = %v", got, k, !(k == tc.kind))
			}
		}
		if !errors.Is(got, tc.err) {
			t.Errorf("%v: the SDK error is not behind it", got)
		}
		if want, ok := strings.CutSuffix(tc.msg, "…"); ok && !strings.HasPrefix(got.Error(), want) || !ok && got.Error() != tc.msg {
			t.Errorf("message %q, want %q", got, tc.msg)
		}
	}
	// Without an object name the message names the operation alone.
	if got, want := s.wrap("list", "", sdkError(403, "AccessDenied", "", nil)).Error(), "s3://bkt/p: list: access denied (AccessDenied)"; got != want {
		t.Errorf("message %q, want %q", got, want)
	}
}
