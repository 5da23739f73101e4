package testutil

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// Test credentials of the versitygw root user StartS3 runs.
const (
	S3AccessKey = "blockferry-test"
	S3SecretKey = "blockferry-test-secret"
)

// StartS3 runs versitygw with its posix backend in a temporary directory on a free
// loopback port and returns its endpoint (http://127.0.0.1:PORT) and the root
// user's keys. The server is killed when the test ends. Skips (fails in CI) when
// versitygw is not installed.
func StartS3(t testing.TB) (endpoint, accessKey, secretKey string) {
	t.Helper()
	return StartS3Server(t).Endpoint, S3AccessKey, S3SecretKey
}

// S3Server is a versitygw that StartS3Server runs, which a test may stop and start
// again on the same port with the same data, to play an outage.
type S3Server struct {
	// Endpoint is http://127.0.0.1:PORT; the keys are S3AccessKey and S3SecretKey
	// unless StartS3ServerAs named others.
	Endpoint             string
	AccessKey, SecretKey string
	bin, addr            string
	dir                  string

	mu   sync.Mutex
	stop func() // kills the running process; nil while stopped
}

// StartS3Server is StartS3, returning the server. It is killed when the test ends.
func StartS3Server(t testing.TB) *S3Server {
	t.Helper()
	return StartS3ServerAs(t, S3AccessKey, S3SecretKey)
}

// StartS3ServerAs is StartS3Server with other root keys: two servers with
// different keys stand for two accounts.
func StartS3ServerAs(t testing.TB, accessKey, secretKey string) *S3Server {
	t.Helper()
	s := &S3Server{bin: RequireTool(t, "versitygw"), dir: t.TempDir(), AccessKey: accessKey, SecretKey: secretKey}
	// The port is found by binding :0 and closing, so another process may take it
	// before versitygw binds; then versitygw exits and we try another.
	var lastErr error
	for range 3 {
		port, err := freePort()
		if err != nil {
			t.Fatalf("finding a free port: %v", err)
		}
		s.addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		if lastErr = s.Start(); lastErr == nil {
			s.Endpoint = "http://" + s.addr
			t.Cleanup(s.Stop)
			return s
		}
	}
	t.Fatalf("starting versitygw: %v", lastErr)
	return nil
}

// Stop kills the server: connections are refused until Start.
func (s *S3Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stop != nil {
		s.stop()
		s.stop = nil
	}
}

// Start runs the server (again) on its port and returns once it answers. It may
// be called from any goroutine.
func (s *S3Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stop != nil {
		return nil
	}
	var out syncBuffer
	cmd := exec.Command(s.bin,
		"--access", s.AccessKey, "--secret", s.SecretKey,
		"--port", s.addr,
		// Without it versitygw closes every connection after one response, which
		// would hide connection-reuse problems and slow parallel tests down.
		"--keep-alive",
		"--quiet", // no per-request log lines
		"posix", s.dir)
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := func() {
		_ = cmd.Process.Kill()
		<-exited
	}

	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		// Any answer from versitygw (an unauthenticated request gets 403) means it
		// serves; the Server header tells it from another program that took the port.
		resp, err := client.Get("http://" + s.addr + "/")
		if err == nil {
			resp.Body.Close()
			if resp.Header.Get("Server") == "VERSITYGW" {
				s.stop = stop
				return nil
			}
		}
		select {
		case err := <-exited:
			return fmt.Errorf("versitygw on %s exited (%v): %s", s.addr, err, bytes.TrimSpace(out.Bytes()))
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			stop()
			return fmt.Errorf("versitygw on %s did not answer within 30s: %s", s.addr, bytes.TrimSpace(out.Bytes()))
		}
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// syncBuffer collects a child's output, written from exec's copying goroutines
// while the test may read it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes())
}

// CreateBucket creates bucket on the S3 server at endpoint with the given keys.
func CreateBucket(t testing.TB, endpoint, accessKey, secretKey, bucket string) {
	t.Helper()
	client := s3.New(s3.Options{
		BaseEndpoint: aws.String(endpoint),
		Region:       "us-east-1",
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider(accessKey, secretKey, ""),
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := client.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(bucket)}); err != nil {
		t.Fatalf("creating bucket %q at %s: %v", bucket, endpoint, err)
	}
}

// S3Env points the AWS default credential chain at the given keys for the rest of
// the test, and shields it from the developer's own AWS setup: no profile, shared
// files or session token, and no instance-metadata probing. Uses t.Setenv, so the
// test may not be parallel.
func S3Env(t testing.TB, accessKey, secretKey string) {
	t.Helper()
	t.Setenv("AWS_ACCESS_KEY_ID", accessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", secretKey)
	t.Setenv("AWS_SESSION_TOKEN", "")
	t.Setenv("AWS_REGION", "us-east-1")
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_CONFIG_FILE", "/nonexistent/blockferry-test/aws-config")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/blockferry-test/aws-credentials")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_ENDPOINT_URL", "")
	t.Setenv("AWS_ENDPOINT_URL_S3", "")
}
