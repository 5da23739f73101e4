// Package s3 is a sinks.Store in an S3 bucket (AWS or any S3-compatible server),
// addressed by URIs such as
//
//	s3://bucket/prefix?endpoint=http://127.0.0.1:7070&region=us-east-1&path_style=true
//
// Credentials come from the standard AWS chain (AWS_ACCESS_KEY_ID and
// AWS_SECRET_ACCESS_KEY, shared config and credentials files, SSO, instance roles…),
// never from the URI, so that URIs can be logged and stored in job descriptions.
package s3

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"

	"github.com/blockferry/blockferry/sinks"
)

// maxAttempts bounds the SDK's retries of throttling (503 SlowDown), 5xx and
// connection errors; with its exponential backoff capped at maxBackoff this rides
// out roughly a minute of server trouble before an operation fails.
const (
	maxAttempts = 8
	maxBackoff  = 20 * time.Second
)

// Store is a sinks.Store keeping objects under a prefix of one bucket. It is safe
// for concurrent use; its HTTP client keeps enough idle connections that parallel
// uploads reuse them instead of opening a connection (and TLS session) per request.
type Store struct {
	client   *s3.Client
	bucket   string
	prefix   string // "" or ends with "/"
	name     string // s3://bucket/prefix, for messages
	location string // the URI; it never holds credentials
	https    bool   // TLS to the server: payloads go unsigned

	// noConditionalPut is set once the server answered 501 to If-None-Match, so
	// PutIfAbsent stops sending requests that are bound to fail.
	noConditionalPut atomic.Bool
}

var _ sinks.Store = (*Store)(nil)

// Open returns the store for an s3:// URI. The host is the bucket, the path a key
// prefix. Query parameters:
//
//	endpoint    base URL of an S3-compatible server (default: AWS)
//	region      signing region (default: from the AWS config; us-east-1 with endpoint)
//	path_style  true for http://host/bucket/key addressing (default: true with
//	            endpoint, false for AWS)
//
// Open does no network I/O (LoadDefaultConfig only reads the environment and
// config files); call Check to find a missing bucket or bad credentials early.
func Open(ctx context.Context, u *url.URL) (*Store, error) {
	if u.Scheme != "s3" {
		return nil, fmt.Errorf("s3 store: scheme %q is not s3", u.Scheme)
	}
	if u.User != nil {
		return nil, fmt.Errorf("s3 store %s: credentials do not belong in the URI; use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or an AWS profile", u.Redacted())
	}
	bucket := u.Host
	if bucket == "" {
		return nil, fmt.Errorf("s3 store %s: no bucket (want s3://bucket/prefix)", u.Redacted())
	}
	prefix := strings.Trim(u.Path, "/")
	name := "s3://" + bucket
	if prefix != "" {
		name += "/" + prefix
		prefix += "/"
	}

	var endpoint, region string
	pathStyle, pathStyleSet := false, false
	for k, vs := range u.Query() {
		v := vs[len(vs)-1]
		switch k {
		case "endpoint":
			e, err := url.Parse(v)
			if err != nil || (e.Scheme != "http" && e.Scheme != "https") || e.Host == "" {
				return nil, fmt.Errorf("%s: endpoint %q is not an http(s) URL", name, v)
			}
			endpoint = v
		case "region":
			region = v
		case "path_style":
			b, err := strconv.ParseBool(v)
			if err != nil {
				return nil, fmt.Errorf("%s: path_style=%q is not a boolean", name, v)
			}
			pathStyle, pathStyleSet = b, true
		default:
			// Refuse rather than ignore: a mistyped "endpiont" would otherwise send
			// backups to AWS.
			return nil, fmt.Errorf("%s: unknown parameter %q (want endpoint, region, path_style)", name, k)
		}
	}
	if !pathStyleSet {
		// S3-compatible servers rarely have wildcard DNS for bucket subdomains.
		pathStyle = endpoint != ""
	}

	opts := []func(*config.LoadOptions) error{
		config.WithHTTPClient(newHTTPClient()),
		config.WithRetryer(newRetryer),
	}
	if region != "" {
		opts = append(opts, config.WithRegion(region))
	}
	cfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("%s: loading AWS configuration: %w", name, err)
	}
	if cfg.Region == "" {
		if endpoint == "" {
			return nil, fmt.Errorf("%s: no region; add region= to the URI or set AWS_REGION", name)
		}
		// Most S3-compatible servers accept (or ignore) us-east-1.
		cfg.Region = "us-east-1"
	}

	client := s3.NewFromConfig(cfg, func(o *s3.Options) {
		if endpoint != "" {
			o.BaseEndpoint = aws.String(endpoint)
		}
		o.UsePathStyle = pathStyle
		// Since early 2025 the SDK adds CRC checksums (and aws-chunked trailers) to
		// every upload and validates them on download by default; many
		// S3-compatible servers reject or mangle those. Checksums only where an API
		// demands them keeps requests plain SigV4. Set here rather than via
		// LoadOptions so AWS_REQUEST_CHECKSUM_CALCULATION cannot flip it back.
		o.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
		o.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
	})

	// Without endpoint= the client talks https to AWS, unless AWS_ENDPOINT_URL(_S3)
	// or the shared config set an endpoint, which the client options now show.
	https := true
	if ep := client.Options().BaseEndpoint; ep != nil {
		https = strings.HasPrefix(strings.ToLower(*ep), "https:")
	}

	loc := name
	if u.RawQuery != "" {
		loc += "?" + u.RawQuery
	}
	return &Store{
		client:   client,
		bucket:   bucket,
		prefix:   prefix,
		name:     name,
		location: loc,
		https:    https,
	}, nil
}

// newHTTPClient is the SDK's default client with a larger idle pool: Go keeps only
// 2 idle connections per host by default (the SDK raises it to 10), so with dozens
// of uploads in flight most connections would be closed after one request and
// re-dialed.
func newHTTPClient() *awshttp.BuildableClient {
	return awshttp.NewBuildableClient().WithTransportOptions(func(tr *http.Transport) {
		tr.MaxIdleConns = 256
		tr.MaxIdleConnsPerHost = 128
		tr.IdleConnTimeout = 90 * time.Second
		// A server that accepted a request and then went silent would otherwise hang
		// the operation until its context ends; a timeout lets the retryer act.
		tr.ResponseHeaderTimeout = 5 * time.Minute
	}).WithDialerOptions(func(d *net.Dialer) {
		d.Timeout = 30 * time.Second
		d.KeepAlive = 30 * time.Second
	})
}

func newRetryer() aws.Retryer {
	return retry.NewStandard(func(o *retry.StandardOptions) {
		o.MaxAttempts = maxAttempts
		o.MaxBackoff = maxBackoff
		// The default client-side retry quota (a token bucket shared by all calls)
		// gives up on every retry after ~35 failures, which a backup with 64
		// uploads in flight reaches within one brief server hiccup. Backoff alone
		// is the politer and more robust limit here.
		o.RateLimiter = ratelimit.None
		// 409 ConditionalRequestConflict means another conditional write of the
		// same key was in flight; retrying settles whether it won (412) or not.
		o.Retryables = append(o.Retryables, retry.RetryableErrorCode{
			Codes: map[string]struct{}{"ConditionalRequestConflict": {}},
		})
	})
}

// Location returns the store's URI (it never holds credentials).
func (s *Store) Location() string { return s.location }

func (s *Store) key(name string) (string, error) {
	if name == "" || strings.HasPrefix(name, "/") {
		return "", fmt.Errorf("%s: invalid object name %q", s.name, name)
	}
	return s.prefix + name, nil
}

// Check asks the server about the bucket (HeadBucket), so that a missing bucket or
// rejected credentials surface as sinks.ErrNoRepository or sinks.ErrAccessDenied
// before any work starts.
func (s *Store) Check(ctx context.Context) error {
	_, err := s.client.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: aws.String(s.bucket)})
	if err == nil {
		return nil
	}
	if _, status := errorCode(err); status == http.StatusNotFound || status == http.StatusForbidden {
		// Answers to HEAD carry no body, so a 404 does not say what is missing
		// (versitygw answers an unknown access key with 404 XAdminUserNotFound) nor
		// a 403 why. A one-key listing gets the error code in its body.
		_, lerr := s.client.ListObjectsV2(ctx, &s3.ListObjectsV2Input{
			Bucket:  aws.String(s.bucket),
			Prefix:  aws.String(s.prefix),
			MaxKeys: aws.Int32(1),
		})
		if lerr == nil {
			return nil // the bucket is there and readable after all
		}
		err = lerr
	}
	return s.wrap("check bucket", "", err)
}

// Put stores data under name, replacing any existing object.
func (s *Store) Put(ctx context.Context, name string, data []byte) error {
	key, err := s.key(name)
	if err != nil {
		return err
	}
	if _, err := s.client.PutObject(ctx, s.putInput(key, data), s.putOptions()...); err != nil {
		return s.wrap("put", name, err)
	}
	return nil
}

func (s *Store) putInput(key string, data []byte) *s3.PutObjectInput {
	// A bytes.Reader is seekable and its length known: the SDK neither buffers the
	// body nor falls back to chunked encoding, and can rewind it for retries.
	return &s3.PutObjectInput{
		Bucket:        aws.String(s.bucket),
		Key:           aws.String(key),
		Body:          bytes.NewReader(data),
		ContentLength: aws.Int64(int64(len(data))),
	}
}

// putOptions skips the SHA-256 of the payload that SigV4 would otherwise sign
// (sending UNSIGNED-PAYLOAD) when TLS protects the body: hashing every chunk costs
// CPU for no gain, since TLS already guarantees integrity in transit and chunks are
// verified against their content hash when read back. Over plain http the signed
// hash is the only thing that detects a corrupted body, so it stays.
func (s *Store) putOptions() []func(*s3.Options) {
	if !s.https {
		return nil
	}
	return []func(*s3.Options){s3.WithAPIOptions(v4.SwapComputePayloadSHA256ForUnsignedPayloadMiddleware)}
}

// PutIfAbsent stores data under name unless an object is already there, using a
// conditional PutObject (If-None-Match: *), which AWS and current S3-compatible
// servers evaluate atomically.
//
// On a server that answers 501 Not Implemented to the condition it falls back to
// HeadObject followed by PutObject. That is racy: two writers can both see no
// object and the later one silently replaces the earlier. Servers that ignore the
// header altogether cannot be detected and behave like Put.
//
// A retried conditional put whose first attempt did reach the server (the response
// was lost) reports ErrExists for what is our own object; callers that care can
// compare contents.
func (s *Store) PutIfAbsent(ctx context.Context, name string, data []byte) error {
	key, err := s.key(name)
	if err != nil {
		return err
	}
	if !s.noConditionalPut.Load() {
		in := s.putInput(key, data)
		in.IfNoneMatch = aws.String("*")
		_, err := s.client.PutObject(ctx, in, s.putOptions()...)
		if err == nil {
			return nil
		}
		if code, status := errorCode(err); code != "NotImplemented" && status != http.StatusNotImplemented {
			return s.wrap("put", name, err)
		}
		s.noConditionalPut.Store(true)
	}
	exists, err := s.Exists(ctx, name)
	if err != nil {
		return err
	}
	if exists {
		return &storeError{
			msg:  fmt.Sprintf("%s: put %q: %v", s.name, name, sinks.ErrExists),
			kind: sinks.ErrExists,
		}
	}
	return s.Put(ctx, name, data)
}

// Get returns the whole object, or an error wrapping sinks.ErrNotFound.
func (s *Store) Get(ctx context.Context, name string) ([]byte, error) {
	key, err := s.key(name)
	if err != nil {
		return nil, err
	}
	out, err := s.client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(key)})
	if err != nil {
		return nil, s.wrap("get", name, err)
	}
	defer out.Body.Close()
	var buf bytes.Buffer
	if n := aws.ToInt64(out.ContentLength); n > 0 {
		buf.Grow(int(n))
	}
	// A connection dropped mid-body shows up here as io.ErrUnexpectedEOF (net/http
	// checks Content-Length), so a truncated object is never returned as whole.
	if _, err := io.Copy(&buf, out.Body); err != nil {
		return nil, fmt.Errorf("%s: get %q: reading body: %w", s.name, name, err)
	}
	return buf.Bytes(), nil
}

// Exists reports whether an object is stored under name (HeadObject).
func (s *Store) Exists(ctx context.Context, name string) (bool, error) {
	key, err := s.key(name)
	if err != nil {
		return false, err
	}
	_, err = s.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(key)})
	if err == nil {
		return true, nil
	}
	err = s.wrap("head", name, err)
	if errors.Is(err, sinks.ErrNotFound) {
		return false, nil
	}
	return false, err
}

// List calls fn with every object name starting with prefix, a page of up to 1000
// keys (ListObjectsV2) at a time.
func (s *Store) List(ctx context.Context, prefix string, fn func(name string) error) error {
	return s.ListInfo(ctx, prefix, func(o sinks.ObjectInfo) error { return fn(o.Name) })
}

// ListInfo is List with each object's size and LastModified (the server's clock,
// to the second).
func (s *Store) ListInfo(ctx context.Context, prefix string, fn func(sinks.ObjectInfo) error) error {
	p := s3.NewListObjectsV2Paginator(s.client, &s3.ListObjectsV2Input{
		Bucket: aws.String(s.bucket),
		Prefix: aws.String(s.prefix + prefix),
	})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return s.wrap("list", prefix, err)
		}
		for _, obj := range page.Contents {
			key := aws.ToString(obj.Key)
			// Keys ending in "/" are directory markers (some servers, and consoles,
			// create them); they are never objects of ours.
			if strings.HasSuffix(key, "/") || !strings.HasPrefix(key, s.prefix) {
				continue
			}
			info := sinks.ObjectInfo{Name: strings.TrimPrefix(key, s.prefix), Size: aws.ToInt64(obj.Size), ModTime: aws.ToTime(obj.LastModified)}
			if err := fn(info); err != nil {
				return err
			}
		}
	}
	return nil
}

// Delete removes the object; a missing object is not an error.
func (s *Store) Delete(ctx context.Context, name string) error {
	key, err := s.key(name)
	if err != nil {
		return err
	}
	_, err = s.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(key)})
	if err != nil {
		// AWS answers 204 for a missing key, but some servers say 404 NoSuchKey.
		if err = s.wrap("delete", name, err); errors.Is(err, sinks.ErrNotFound) {
			return nil
		}
		return err
	}
	return nil
}

// deleteBatch is the most keys one DeleteObjects request takes.
const deleteBatch = 1000

// DeleteObjects removes the named objects with DeleteObjects requests of up to
// 1000 keys. Missing keys are not errors (S3 reports them deleted); the first key
// the server refuses fails the call.
func (s *Store) DeleteObjects(ctx context.Context, names []string) error {
	for len(names) > 0 {
		batch := names[:min(deleteBatch, len(names))]
		names = names[len(batch):]
		ids := make([]types.ObjectIdentifier, len(batch))
		for i, name := range batch {
			key, err := s.key(name)
			if err != nil {
				return err
			}
			ids[i] = types.ObjectIdentifier{Key: aws.String(key)}
		}
		out, err := s.client.DeleteObjects(ctx, &s3.DeleteObjectsInput{
			Bucket: aws.String(s.bucket),
			Delete: &types.Delete{Objects: ids, Quiet: aws.Bool(true)},
		})
		if err != nil {
			return s.wrap("delete", batch[0], err)
		}
		for _, e := range out.Errors {
			if aws.ToString(e.Code) == "NoSuchKey" {
				continue
			}
			name := strings.TrimPrefix(aws.ToString(e.Key), s.prefix)
			return fmt.Errorf("%s: delete %q: %s: %s", s.name, name, aws.ToString(e.Code), aws.ToString(e.Message))
		}
	}
	return nil
}

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
