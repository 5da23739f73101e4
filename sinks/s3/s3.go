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
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/blockferry/blockferry/sinks"
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
	// verifiesCRC is set once the server answered a PUT with the CRC32C we sent:
	// it checks bodies against x-amz-checksum-crc32c, so payloads over plain http
	// need not be signed (putOptions).
	verifiesCRC atomic.Bool
}

var _ sinks.Store = (*Store)(nil)

// Open returns the store for an s3:// URI. The host is the bucket, the path a key
// prefix. Query parameters:
//
//	endpoint    base URL of an S3-compatible server (default: AWS)
//	region      signing region (default: from the AWS config; us-east-1 with endpoint)
//	path_style  true for http://host/bucket/key addressing (default: true with
//	            endpoint, false for AWS)
//	profile     the AWS shared-config profile whose credentials to use (default:
//	            the standard chain), so that each repository has its own
//	credentials_file
//	            absolute path of an env-file of AWS_ACCESS_KEY_ID,
//	            AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN lines, only its owner
//	            may read, whose credentials this store alone uses (see
//	            ReadCredentialsFile); not with profile
//
// Open does no network I/O (LoadDefaultConfig only reads the environment and
// config files, and the credentials file); call Check to find a missing bucket or bad credentials early.
func Open(ctx context.Context, u *url.URL) (*Store, error) {
	c, err := parseURI(u)
	if err != nil {
		return nil, err
	}
	client, err := newClient(ctx, c)
	if err != nil {
		return nil, err
	}
	// Without endpoint= the client talks https to AWS, unless AWS_ENDPOINT_URL(_S3)
	// or the shared config set an endpoint, which the client options now show.
	https := true
	if ep := client.Options().BaseEndpoint; ep != nil {
		https = strings.HasPrefix(strings.ToLower(*ep), "https:")
	}
	return &Store{
		client:   client,
		bucket:   c.bucket,
		prefix:   c.prefix,
		name:     c.name,
		location: c.location,
		https:    https,
	}, nil
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
// before any work starts. The worker's /readyz calls it: HeadObject of one key
// cannot tell those from a missing object.
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
	return s.putObject(ctx, s.putInput(key, data), name)
}

// putObject sends in, noting whether the server verified its CRC32C.
func (s *Store) putObject(ctx context.Context, in *s3.PutObjectInput, name string) error {
	out, err := s.client.PutObject(ctx, in, s.putOptions()...)
	if err != nil {
		return s.wrap("put", name, err)
	}
	if in.ChecksumCRC32C != nil && aws.ToString(out.ChecksumCRC32C) == *in.ChecksumCRC32C {
		s.verifiesCRC.Store(true)
	}
	return nil
}

// castagnoli is the CRC-32C table; crc32 computes it with the CPU's instruction.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func (s *Store) putInput(key string, data []byte) *s3.PutObjectInput {
	// A bytes.Reader is seekable and its length known: the SDK neither buffers the
	// body nor falls back to chunked encoding, and can rewind it for retries.
	in := &s3.PutObjectInput{
		Bucket:        aws.String(s.bucket),
		Key:           aws.String(key),
		Body:          bytes.NewReader(data),
		ContentLength: aws.Int64(int64(len(data))),
	}
	if !s.https {
		// Over plain http, the body's integrity check: a server that knows
		// x-amz-checksum-crc32c refuses a body that does not match (BadDigest) and
		// answers with the value. CRC-32C costs a tenth of SHA-256 here.
		in.ChecksumCRC32C = aws.String(base64.StdEncoding.EncodeToString(binary.BigEndian.AppendUint32(nil, crc32.Checksum(data, castagnoli))))
	}
	return in
}

// putOptions skips the SHA-256 of the payload that SigV4 would otherwise sign
// (sending UNSIGNED-PAYLOAD) when something else guards the body in transit:
// TLS, or, over plain http, the CRC-32C of putInput once the server has shown
// that it verifies it. Hashing every chunk twice (SHA-256 here, and again on the
// server to check the signature) cost more CPU than the rest of the PUT; chunks
// are verified against their content hash when read back in any case. Until the
// server has answered a PUT with our CRC-32C, payloads over http stay signed: a
// server that ignores the header would otherwise take a corrupted body.
func (s *Store) putOptions() []func(*s3.Options) {
	if !s.https && !s.verifiesCRC.Load() {
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
		err := s.putObject(ctx, in, name)
		if err == nil {
			return nil
		}
		if code, status := errorCode(err); code != "NotImplemented" && status != http.StatusNotImplemented {
			return err
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
func (s *Store) Get(ctx context.Context, name string, limit int64) ([]byte, error) {
	return s.GetInto(ctx, name, nil, limit)
}

// readBody reads a GetObject answer's body into buf's memory when it has the
// capacity (a new slice otherwise). The server's Content-Length is checked
// against limit before anything is allocated for it; net/http then delivers
// exactly that many bytes, and a connection dropped mid-body shows up as
// io.ErrUnexpectedEOF, so a truncated object is never returned as whole. A body
// without a length (rare: S3 servers send one) is read through a limit instead,
// into memory of its own.
func (s *Store) readBody(out *s3.GetObjectOutput, name string, buf []byte, limit int64) ([]byte, error) {
	defer out.Body.Close()
	n := aws.ToInt64(out.ContentLength)
	if out.ContentLength == nil || n < 0 {
		return s.readUnsized(out.Body, name, limit)
	}
	if n > limit {
		return nil, s.tooLarge(name, n, limit)
	}
	if int64(cap(buf)) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(out.Body, buf); err != nil {
		return nil, fmt.Errorf("%s: get %q: reading body: %w", s.name, name, err)
	}
	return buf, nil
}

// readUnsized reads a body of unknown length, at most limit+1 bytes of it: one
// more than limit tells an object that exceeds it.
func (s *Store) readUnsized(body io.Reader, name string, limit int64) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(body, limit+1))
	switch {
	case err != nil:
		return nil, fmt.Errorf("%s: get %q: reading body: %w", s.name, name, err)
	case int64(len(data)) > limit:
		return nil, s.tooLarge(name, int64(len(data)), limit)
	}
	return data, nil
}

func (s *Store) tooLarge(name string, n, limit int64) error {
	return &storeError{
		msg:  fmt.Sprintf("%s: get %q: object of at least %d bytes, more than the %d its reader allows", s.name, name, n, limit),
		kind: sinks.ErrInvalidObject,
	}
}

// GetInto is Get into buf's memory when it has the capacity.
func (s *Store) GetInto(ctx context.Context, name string, buf []byte, limit int64) ([]byte, error) {
	key, err := s.key(name)
	if err != nil {
		return nil, err
	}
	out, err := s.client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(key)})
	if err != nil {
		return nil, s.wrap("get", name, err)
	}
	return s.readBody(out, name, buf, limit)
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
//
// A page the server says is truncated must carry a continuation token not seen
// before in this listing; otherwise ListInfo fails. Stopping there instead would
// hand out an incomplete listing as whole (and garbage collection would condemn
// chunks that unlisted backups reference), and following a token again would
// never end.
func (s *Store) ListInfo(ctx context.Context, prefix string, fn func(sinks.ObjectInfo) error) error {
	in := &s3.ListObjectsV2Input{
		Bucket: aws.String(s.bucket),
		Prefix: aws.String(s.prefix + prefix),
	}
	// Digests of the tokens followed: the server chooses their length.
	followed := map[[sha256.Size]byte]bool{}
	for page := 1; ; page++ {
		out, err := s.client.ListObjectsV2(ctx, in)
		if err != nil {
			return s.wrap("list", prefix, err)
		}
		token := aws.ToString(out.NextContinuationToken)
		truncated := aws.ToBool(out.IsTruncated)
		switch digest := sha256.Sum256([]byte(token)); {
		case truncated && token == "":
			return fmt.Errorf("%s: list %q: %w: the server said page %d is truncated but gave no continuation token: the listing cannot go on, and would be incomplete", s.name, prefix, sinks.ErrBadAnswer, page)
		case truncated && followed[digest]:
			return fmt.Errorf("%s: list %q: %w: page %d gave a continuation token the listing followed before: the listing would never end", s.name, prefix, sinks.ErrBadAnswer, page)
		default:
			followed[digest] = true
		}
		for _, obj := range out.Contents {
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
		if !truncated {
			return nil
		}
		in.ContinuationToken = out.NextContinuationToken
	}
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
