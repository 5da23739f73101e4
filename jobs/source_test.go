package jobs_test

import (
	"context"
	"net/url"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/blockferry/blockferry/backends"
	"github.com/blockferry/blockferry/jobs"
)

// sizedSource is an export of the size its URI's host says, which must never be
// read.
type sizedSource struct {
	backends.Source
	size int64
}

func (s sizedSource) Size() int64 { return s.size }
func (sizedSource) Close() error  { return nil }

func init() {
	backends.Register(func(_ context.Context, u *url.URL, _ backends.SourceOptions) (backends.Source, error) {
		size, err := strconv.ParseInt(u.Host, 10, 64)
		return sizedSource{size: size}, err
	}, nil, "sized-test")
}

// TestAbsurdSourceSize: a source whose size no backup can hold (a directory as
// file://, an export of 2^63-1 bytes, a disk too large for its chunk size) fails
// at once with a permanent source_invalid, before the engine allocates anything
// for it.
func TestAbsurdSourceSize(t *testing.T) {
	repo := "file://" + filepath.Join(t.TempDir(), "repo")
	r := jobs.NewRunner(jobs.WithDefaultRepository(repo))
	for name, spec := range map[string]jobs.Spec{
		"a directory":               {Source: &jobs.Endpoint{URI: "file://" + t.TempDir()}},
		"an export of 2^63-1 bytes": {Source: &jobs.Endpoint{URI: "sized-test://9223372036854775807"}},
		"2 TiB at 64 KiB chunks": {Source: &jobs.Endpoint{URI: "sized-test://2199023255552"},
			Options: jobs.Options{ChunkSize: 64 << 10}},
	} {
		spec.ID, spec.Kind, spec.Disk = "absurd", jobs.KindBackup, "vm1/vda"
		_, err := runSpec(t, r, spec)
		if f := jobs.Classify(err); f.Code != jobs.CodeSourceInvalid || f.Retryable {
			t.Errorf("%s: %v: classified %+v, want %s", name, err, f, jobs.CodeSourceInvalid)

		}
	}
}
