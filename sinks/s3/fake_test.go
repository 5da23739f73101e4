package s3

import (
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/blockferry/blockferry/internal/testutil"
	"github.com/blockferry/blockferry/sinks"
)

// fakeS3 is a minimal in-memory S3 for behaviour versitygw cannot be made to show:
// servers without conditional puts, and transient 5xx answers.
type fakeS3 struct {
	mu          sync.Mutex
	objects     map[string][]byte
	failPuts    int // answer this many PUTs with 503 SlowDown first
	puts        int
	conditional int    // PUTs that carried If-None-Match
	payloadHash string // X-Amz-Content-Sha256 of the last PUT
}

func (f *fakeS3) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fail := func(status int, code string) {
		w.Header().Set("Content-Type", "application/xml")
		w.WriteHeader(status)
		if r.Method != http.MethodHead {
			fmt.Fprintf(w, "<Error><Code>%s</Code><Message>%s from fake</Message></Error>", code, code)
		}
	}
	switch r.Method {
	case http.MethodPut:
		f.puts++
		f.payloadHash = r.Header.Get("X-Amz-Content-Sha256")
		if f.puts <= f.failPuts {
			fail(http.StatusServiceUnavailable, "SlowDown")
			return
		}
		if r.Header.Get("If-None-Match") != "" {
			f.conditional++
			fail(http.StatusNotImplemented, "NotImplemented")
			return
		}
		data, err := io.ReadAll(r.Body)
		if err != nil {
			fail(http.StatusBadRequest, "IncompleteBody")
			return
		}
		f.objects[r.URL.Path] = data
	case http.MethodHead, http.MethodGet:
		data, ok := f.objects[r.URL.Path]
		if !ok {
			fail(http.StatusNotFound, "NoSuchKey")
			return
		}
		w.Header().Set("Content-Length", fmt.Sprint(len(data)))
		if r.Method == http.MethodGet {
			_, _ = w.Write(data)
		}
	default:
		fail(http.StatusNotImplemented, "NotImplemented")
	}
}

func startFake(t *testing.T, f *fakeS3) *Store {
	t.Helper()
	return startFakeServer(t, f, httptest.NewServer(f))
}

func startFakeServer(t *testing.T, f *fakeS3, srv *httptest.Server) *Store {
	t.Helper()
	f.objects = map[string][]byte{}
	t.Cleanup(srv.Close)
	t.Setenv("AWS_ACCESS_KEY_ID", "fake")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "fake")
	t.Setenv("AWS_CONFIG_FILE", "/nonexistent/blockferry-test/aws-config")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/blockferry-test/aws-credentials")
	u, err := url.Parse("s3://bkt/p?region=us-east-1&endpoint=" + url.QueryEscape(srv.URL))
	if err != nil {
		t.Fatal(err)
	}
	s, err := Open(context.Background(), u)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestPutIfAbsentWithoutConditionalSupport(t *testing.T) {
	ctx := context.Background()
	f := &fakeS3{}
	s := startFake(t, f)
	if err := s.PutIfAbsent(ctx, "config", []byte("a")); err != nil {
		t.Fatalf("first PutIfAbsent: %v", err)
	}
	if err := s.PutIfAbsent(ctx, "config", []byte("b")); !errors.Is(err, sinks.ErrExists) {
		t.Fatalf("second PutIfAbsent: err = %v, want ErrExists", err)
	}
	if got, _ := s.Get(ctx, "config", 1<<30); string(got) != "a" {
		t.Fatalf("config = %q", got)
	}
	if f.conditional != 1 {
		t.Errorf("%d conditional PUTs sent, want 1 (the store should remember the 501)", f.conditional)
	}
}

func TestPutRetriesSlowDown(t *testing.T) {
	ctx := context.Background()
	f := &fakeS3{failPuts: 2}
	s := startFake(t, f)
	if err := s.Put(ctx, "chunks/x", []byte("data")); err != nil {
		t.Fatalf("Put after two 503s: %v", err)
	}
	if got, err := s.Get(ctx, "chunks/x", 1<<30); err != nil || string(got) != "data" {
		t.Fatalf("Get = %q, %v", got, err)
	}
	if f.puts != 3 {
		t.Errorf("%d PUT attempts, want 3", f.puts)
	}
}

// Over https the payload is sent as UNSIGNED-PAYLOAD (TLS guards it); over http its
// SHA-256 is signed.
func TestPayloadSigning(t *testing.T) {
	ctx := context.Background()

	f := &fakeS3{}
	s := startFake(t, f)
	if err := s.Put(ctx, "a", []byte("data")); err != nil {
		t.Fatal(err)
	}
	if len(f.payloadHash) != 64 {
		t.Errorf("http: X-Amz-Content-Sha256 = %q, want a SHA-256", f.payloadHash)
	}

	tf := &fakeS3{}
	srv := httptest.NewTLSServer(tf)
	ca := filepath.Join(t.TempDir(), "ca.pem")
	pemCert := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(ca, pemCert, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("AWS_CA_BUNDLE", ca)
	s = startFakeServer(t, tf, srv)
	if err := s.Put(ctx, "a", []byte("data")); err != nil {
		t.Fatal(err)
	}
	if err := s.PutIfAbsent(ctx, "b", []byte("data")); err != nil {
		t.Fatal(err)
	}
	if tf.payloadHash != "UNSIGNED-PAYLOAD" {
		t.Errorf("https: X-Amz-Content-Sha256 = %q, want UNSIGNED-PAYLOAD", tf.payloadHash)
	}
	if got, err := s.Get(ctx, "b", 1<<30); err != nil || string(got) != "data" {
		t.Fatalf("Get = %q, %v", got, err)
	}
}

// TestGetBoundsWhatTheServerSends: a server that claims, or sends, more than the
// reader's limit gets ErrInvalidObject, and the client allocates no more than
// the limit for it: a hostile or broken server cannot make a worker allocate
// what it likes.
func TestGetBoundsWhatTheServerSends(t *testing.T) {
	const limit = 4 << 20
	for _, tc := range []struct {
		name string
		body http.HandlerFunc
	}{
		{"a Content-Length of 1 TiB", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Length", fmt.Sprint(int64(1)<<40))
			_, _ = w.Write(make([]byte, 1<<20))
		}},
		{"an endless body without a length", func(w http.ResponseWriter, r *http.Request) {
			block := make([]byte, 64<<10)
			for r.Context().Err() == nil {
				if _, err := w.Write(block); err != nil {
					return
				}
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := startFakeServer(t, &fakeS3{}, httptest.NewServer(tc.body))
			var err error
			n := testutil.Allocated(func() { _, err = s.Get(context.Background(), "chunks/x", limit) })
			if !errors.Is(err, sinks.ErrInvalidObject) {
				t.Fatalf("Get: %v, want ErrInvalidObject", err)
			}
			if n > 4*limit {
				t.Errorf("Get allocated %d MiB for an object limited to %d MiB", n>>20, limit>>20)
			}
		})
	}
}

// TestStalledBodyTimesOut: a server that sends an answer's headers and part of
// its body, then nothing, fails the Get with a timeout once the exchange has
// taken exchangeTimeout, instead of holding it until its context ends.
func TestStalledBodyTimesOut(t *testing.T) {
	defer func(d time.Duration) { exchangeTimeout = d }(exchangeTimeout)
	exchangeTimeout = 500 * time.Millisecond
	stalled := make(chan struct{})
	defer close(stalled)
	s := startFakeServer(t, &fakeS3{}, httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Length", "1048576")
		_, _ = w.Write(make([]byte, 1024))
		w.(http.Flusher).Flush()
		<-stalled
	})))
	start := time.Now()
	_, err := s.Get(context.Background(), "chunks/x", 4<<20)
	if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("Get from a server that stalled mid-body: %v, want a timeout", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Get took %v with an exchange timeout of %v", d, exchangeTimeout)
	}
	t.Logf("%v after %v", err, time.Since(start).Round(time.Millisecond))
}
