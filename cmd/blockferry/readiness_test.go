package main

import (
	"context"
	"errors"
	"net/url"
	"testing"

	"github.com/blockferry/blockferry/internal/testutil"
	"github.com/blockferry/blockferry/sinks"
)

// TestRepositoryReadiness: the worker's repository readiness check finds on S3
// what a HEAD of the config object cannot (a missing bucket, an unknown access
// key: both a 404 without a body), while a reachable store without a repository
// yet counts as ready.
func TestRepositoryReadiness(t *testing.T) {
	ctx := context.Background()
	endpoint, ak, sk := testutil.StartS3(t)
	testutil.CreateBucket(t, endpoint, ak, sk, "bkt")
	testutil.S3Env(t, ak, sk)
	check := func(uri string) error {
		t.Helper()
		store, err := sinks.OpenStore(ctx, uri)
		if err != nil {
			t.Fatal(err)
		}
		return repositoryReadiness(store)(ctx)
	}
	query := "?endpoint=" + url.QueryEscape(endpoint)

	if err := check("s3://bkt/bf" + query); err != nil {
		t.Errorf("bucket without a repository yet: %v", err)
	}
	if err := check(t.TempDir()); err != nil {
		t.Errorf("directory without a repository yet: %v", err)
	}
	if err := check("s3://no-such-bucket/bf" + query); !errors.Is(err, sinks.ErrNoRepository) {
		t.Errorf("missing bucket: %v, want ErrNoRepository", err)
	}
	testutil.S3Env(t, "nosuchkey", sk)
	if err := check("s3://bkt/bf" + query); !errors.Is(err, sinks.ErrAccessDenied) {
		t.Errorf("unknown access key: %v, want ErrAccessDenied", err)
	}
}
