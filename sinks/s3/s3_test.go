package s3

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/blockferry/blockferry/internal/testutil"
	"github.com/blockferry/blockferry/sinks"
	"github.com/blockferry/blockferry/sinks/storetest"
)

func open(t *testing.T, uri string) *Store {
	t.Helper()
	u, err := url.Parse(uri)
	if err != nil {
		t.Fatal(err)
	}
	s, err := Open(context.Background(), u)
	if err != nil {
		t.Fatalf("Open(%s): %v", uri, err)
	}
	return s
}

// TestVersity runs the store against a real S3 server. The subtests share one
// server and bucket (separate prefixes) and cannot be parallel: S3Env uses t.Setenv.
func TestVersity(t *testing.T) {
	endpoint, ak, sk := testutil.StartS3(t)
	testutil.CreateBucket(t, endpoint, ak, sk, "bkt")
	testutil.S3Env(t, ak, sk)
	uri := func(prefix string) string {
		return "s3://bkt/" + prefix + "?endpoint=" + url.QueryEscape(endpoint)
	}
	ctx := context.Background()

	t.Run("RoundTrip", func(t *testing.T) {
		s := open(t, uri("rt"))
		if err := s.Check(ctx); err != nil {
			t.Fatalf("Check: %v", err)
		}
		storetest.Run(t, s)
		// The objects are under the prefix in the bucket.
		root := open(t, uri(""))
		if ok, err := root.Exists(ctx, "rt/empty"); err != nil || !ok {
			t.Fatalf("rt/empty in bucket root: %v, %v", ok, err)
		}
	})

	t.Run("GetMissing", func(t *testing.T) {
		s := open(t, uri("missing"))
		_, err := s.Get(ctx, "nope", 1<<30)
		if !errors.Is(err, sinks.ErrNotFound) {
			t.Fatalf("Get missing: err = %v, want ErrNotFound", err)
		}
		t.Logf("message: %v", err)
	})

	t.Run("CorruptedBodyRefused", func(t *testing.T) {
		s := open(t, uri("crc"))
		if err := s.Put(ctx, "first", []byte("signed")); err != nil {
			t.Fatal(err)
		}
		if !s.verifiesCRC.Load() {
			t.Fatal("versitygw did not answer with the CRC-32C: payloads over http stay signed")
		}
		// From now on payloads go unsigned: only the CRC-32C guards them. The first
		// body is corrupted on its way; the server must refuse it and the retry
		// store the right bytes.
		corrupt := &corruptFirstPut{}
		s.client = s3.New(s.client.Options(), func(o *s3.Options) {
			corrupt.next = o.HTTPClient
			o.HTTPClient = corrupt
		})
		want := []byte(strings.Repeat("chunk bytes ", 1000))
		if err := s.Put(ctx, "second", want); err != nil {
			t.Fatal(err)
		}
		if got, err := s.Get(ctx, "second", 1<<30); err != nil || string(got) != string(want) {
			t.Fatalf("Get after a corrupted PUT: %d bytes, %v; want the %d bytes put", len(got), err, len(want))
		}
		if n := corrupt.puts.Load(); n != 2 {
			t.Fatalf("%d PUTs, want 2 (the corrupted one and its retry)", n)
		}
	})

	t.Run("PutIfAbsent", func(t *testing.T) {
		s := open(t, uri("pia"))
		if err := s.PutIfAbsent(ctx, "manifests/m1", []byte("first")); err != nil {
			t.Fatal(err)
		}
		err := s.PutIfAbsent(ctx, "manifests/m1", []byte("second"))
		if !errors.Is(err, sinks.ErrExists) {
			t.Fatalf("second PutIfAbsent: err = %v, want ErrExists", err)
		}
		t.Logf("message: %v", err)
		if got, _ := s.Get(ctx, "manifests/m1", 1<<30); string(got) != "first" {
			t.Fatalf("object changed to %q", got)
		}
		if s.noConditionalPut.Load() {
			t.Error("server refused If-None-Match; PutIfAbsent fell back to the racy HeadObject+PutObject")
		}
	})

	t.Run("PutIfAbsentRace", func(t *testing.T) {
		s := open(t, uri("race"))
		const writers = 8
		var wg sync.WaitGroup
		errs := make([]error, writers)
		for i := range writers {
			wg.Go(func() { errs[i] = s.PutIfAbsent(ctx, "config", []byte{byte(i)}) })
		}
		wg.Wait()
		won := 0
		for i, err := range errs {
			switch {
			case err == nil:
				won++
			case !errors.Is(err, sinks.ErrExists):
				t.Fatalf("writer %d: %v", i, err)
			}
		}
		if won != 1 {
			t.Fatalf("%d writers won PutIfAbsent, want 1", won)
		}
	})

	t.Run("List", func(t *testing.T) {
		s := open(t, uri("list"))
		// More than one ListObjectsV2 page (1000 keys), written in parallel.
		const n = 1100
		names := make([]string, 0, n+2)
		for i := range n {
			names = append(names, fmt.Sprintf("chunks/%02x/%06d", i%256, i))
		}
		names = append(names, "chunksx", "config")
		work := make(chan string)
		var wg sync.WaitGroup
		for range 32 {
			wg.Go(func() {
				for name := range work {
					if err := s.Put(ctx, name, []byte(name)); err != nil {
						t.Error(err)
					}
				}
			})
		}
		for _, name := range names {
			work <- name
		}
		close(work)
		wg.Wait()
		if t.Failed() {
			t.FailNow()
		}

		list := func(prefix string) []string {
			t.Helper()
			var got []string
			if err := s.List(ctx, prefix, func(name string) error { got = append(got, name); return nil }); err != nil {
				t.Fatalf("List %q: %v", prefix, err)
			}
			slices.Sort(got)
			return got
		}
		want := slices.Sorted(slices.Values(names))
		if got := list(""); !slices.Equal(got, want) {
			t.Fatalf("List all: %d names, want %d", len(got), len(want))
		}
		if got := list("chunks/"); len(got) != n {
			t.Fatalf("List chunks/: %d names, want %d", len(got), n)
		}
		wantAB := slices.DeleteFunc(slices.Clone(want), func(s string) bool { return !strings.HasPrefix(s, "chunks/ab") })
		if got := list("chunks/ab"); !slices.Equal(got, wantAB) || len(got) == 0 {
			t.Fatalf("List chunks/ab = %v, want %v", got, wantAB)
		}
		if got := list("nothing/"); len(got) != 0 {
			t.Fatalf("List nothing/ = %v", got)
		}

		stop := errors.New("stop")
		calls := 0
		if err := s.List(ctx, "", func(string) error { calls++; return stop }); !errors.Is(err, stop) || calls != 1 {
			t.Fatalf("List with failing fn: err = %v after %d calls", err, calls)
		}
	})

	t.Run("MissingBucket", func(t *testing.T) {
		s := open(t, "s3://nobucket/p?endpoint="+url.QueryEscape(endpoint))
		err := s.Check(ctx)
		if !errors.Is(err, sinks.ErrNoRepository) {
			t.Fatalf("Check: err = %v, want ErrNoRepository", err)
		}
		if want := `s3://nobucket/p: bucket "nobucket" does not exist`; err.Error() != want {
			t.Errorf("message %q, want %q", err, want)
		}
		if _, err := s.Get(ctx, "config", 1<<30); !errors.Is(err, sinks.ErrNoRepository) {
			t.Fatalf("Get: err = %v, want ErrNoRepository", err)
		}
		if err := s.Put(ctx, "config", []byte("x")); !errors.Is(err, sinks.ErrNoRepository) {
			t.Fatalf("Put: err = %v, want ErrNoRepository", err)
		}
		if err := s.List(ctx, "", func(string) error { return nil }); !errors.Is(err, sinks.ErrNoRepository) {
			t.Fatalf("List: err = %v, want ErrNoRepository", err)
		}
	})

	t.Run("WrongSecret", func(t *testing.T) {
		testutil.S3Env(t, ak, sk+"-wrong")
		s := open(t, uri("rt"))
		err := s.Check(ctx)
		if !errors.Is(err, sinks.ErrAccessDenied) {
			t.Fatalf("Check: err = %v, want ErrAccessDenied", err)
		}
		t.Logf("message: %v", err)
		if _, err := s.Get(ctx, "empty", 1<<30); !errors.Is(err, sinks.ErrAccessDenied) {
			t.Fatalf("Get: err = %v, want ErrAccessDenied", err)
		}
		err = s.Put(ctx, "x", []byte("x"))
		if !errors.Is(err, sinks.ErrAccessDenied) {
			t.Fatalf("Put: err = %v, want ErrAccessDenied", err)
		}
		t.Logf("message: %v", err)
		if _, err := s.Exists(ctx, "empty"); !errors.Is(err, sinks.ErrAccessDenied) {
			t.Fatalf("Exists: err = %v, want ErrAccessDenied", err)
		}
	})

	t.Run("UnknownKey", func(t *testing.T) {
		testutil.S3Env(t, "nosuchkey", sk)
		s := open(t, uri("rt"))
		_, err := s.Get(ctx, "empty", 1<<30)
		if !errors.Is(err, sinks.ErrAccessDenied) {
			t.Fatalf("Get: err = %v, want ErrAccessDenied", err)
		}
		t.Logf("message: %v", err)
		if err := s.Check(ctx); !errors.Is(err, sinks.ErrAccessDenied) {
			t.Fatalf("Check: err = %v, want ErrAccessDenied", err)
		}
	})
}

func TestOpenURI(t *testing.T) {
	t.Setenv("AWS_REGION", "")
	t.Setenv("AWS_DEFAULT_REGION", "")
	t.Setenv("AWS_CONFIG_FILE", "/nonexistent/blockferry-test/aws-config")
	t.Setenv("AWS_PROFILE", "")
	for _, tc := range []struct {
		uri       string
		ok        bool
		prefix    string
		pathStyle bool
		region    string
		location  string
	}{
		{uri: "s3://bkt/a/b/?endpoint=http://127.0.0.1:7070", ok: true, prefix: "a/b/", pathStyle: true, region: "us-east-1",
			location: "s3://bkt/a/b?endpoint=http://127.0.0.1:7070"},
		{uri: "s3://bkt?endpoint=https://s3.example.com&path_style=false&region=eu-west-3", ok: true, pathStyle: false, region: "eu-west-3",
			location: "s3://bkt?endpoint=https://s3.example.com&path_style=false&region=eu-west-3"},
		{uri: "s3://bkt/p?region=eu-central-1", ok: true, prefix: "p/", pathStyle: false, region: "eu-central-1",
			location: "s3://bkt/p?region=eu-central-1"},
		{uri: "s3://bkt/p"}, // AWS without any region
		{uri: "s3://key:secret@bkt/p?region=us-east-1"},
		{uri: "s3:///p?region=us-east-1"},
		{uri: "s3://bkt/p?region=us-east-1&endpiont=http://x"},
		{uri: "s3://bkt/p?endpoint=ftp://x"},
		{uri: "s3://bkt/p?region=us-east-1&path_style=maybe"},
		{uri: "file:///srv"},
	} {
		u, err := url.Parse(tc.uri)
		if err != nil {
			t.Fatal(err)
		}
		s, err := Open(context.Background(), u)
		if !tc.ok {
			if err == nil {
				t.Errorf("Open(%s) succeeded", tc.uri)
			} else if strings.Contains(err.Error(), "secret") {
				t.Errorf("Open(%s): message shows the secret: %v", tc.uri, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("Open(%s): %v", tc.uri, err)
			continue
		}
		o := s.client.Options()
		if s.prefix != tc.prefix || o.UsePathStyle != tc.pathStyle || o.Region != tc.region {
			t.Errorf("Open(%s): prefix %q path style %v region %q", tc.uri, s.prefix, o.UsePathStyle, o.Region)
		}
		if s.Location() != tc.location {
			t.Errorf("Open(%s): Location %q, want %q", tc.uri, s.Location(), tc.location)
		}
	}
}

// corruptFirstPut is an HTTP client that flips a byte in the body of the first
// PUT it sends, as a faulty network might.
type corruptFirstPut struct {
	next aws.HTTPClient
	puts atomic.Int32
}

func (c *corruptFirstPut) Do(req *http.Request) (*http.Response, error) {
	if req.Method == http.MethodPut && c.puts.Add(1) == 1 {
		body, err := io.ReadAll(req.Body)
		if err != nil {
			return nil, err
		}
		body[len(body)/2] ^= 0xff
		req.Body = io.NopCloser(bytes.NewReader(body))
	}
	return c.next.Do(req)
}
