package s3

import (
	"errors"
	"net/url"
	"strings"
	"testing"

	"github.com/blockferry/blockferry/sinks"
)

// TestParseURI: what an s3:// URI says, without the SDK or the AWS environment.
func TestParseURI(t *testing.T) {
	for _, tc := range []struct {
		uri  string
		want uriConfig
		err  string // part of the message when parsing must fail
	}{
		{uri: "s3://bkt", want: uriConfig{bucket: "bkt", name: "s3://bkt", location: "s3://bkt"}},
		{uri: "s3://bkt//a/b//", want: uriConfig{bucket: "bkt", prefix: "a/b/", name: "s3://bkt/a/b", location: "s3://bkt/a/b"}},
		{uri: "s3://bkt/p?region=eu-central-1", want: uriConfig{bucket: "bkt", prefix: "p/", name: "s3://bkt/p",
			location: "s3://bkt/p?region=eu-central-1", region: "eu-central-1"}},
		// With an endpoint, path style is the default; the query is kept as written.
		{uri: "s3://bkt/p?endpoint=http%3A%2F%2F127.0.0.1%3A7070", want: uriConfig{bucket: "bkt", prefix: "p/", name: "s3://bkt/p",
			location: "s3://bkt/p?endpoint=http%3A%2F%2F127.0.0.1%3A7070", endpoint: "http://127.0.0.1:7070", pathStyle: true}},
		{uri: "s3://bkt?endpoint=https://s3.example.com&path_style=false", want: uriConfig{bucket: "bkt", name: "s3://bkt",
			location: "s3://bkt?endpoint=https://s3.example.com&path_style=false", endpoint: "https://s3.example.com"}},
		{uri: "s3://bkt?path_style=1", want: uriConfig{bucket: "bkt", name: "s3://bkt", location: "s3://bkt?path_style=1", pathStyle: true}},
		{uri: "s3://bkt?region=eu-west-1&profile=tenant-b", want: uriConfig{bucket: "bkt", name: "s3://bkt", location: "s3://bkt?region=eu-west-1&profile=tenant-b", region: "eu-west-1", profile: "tenant-b"}},
		// A repeated parameter counts with its last value.
		{uri: "s3://bkt?region=a&region=b", want: uriConfig{bucket: "bkt", name: "s3://bkt", location: "s3://bkt?region=a&region=b", region: "b"}},

		{uri: "file:///srv", err: `scheme "file" is not s3`},
		{uri: "s3://key:secret@bkt/p", err: "credentials do not belong in the URI"},
		{uri: "s3:///p", err: "no bucket"},
		{uri: "s3://bkt/p?endpiont=http://x", err: `s3://bkt/p: unknown parameter "endpiont"`},
		{uri: "s3://bkt/p?endpoint=ftp://x", err: `endpoint "ftp://x" is not an http(s) URL`},
		{uri: "s3://bkt/p?endpoint=http://", err: `endpoint "http://" is not an http(s) URL`},
		{uri: "s3://bkt/p?path_style=maybe", err: `path_style="maybe" is not a boolean`},
	} {
		u, err := url.Parse(tc.uri)
		if err != nil {
			t.Fatal(err)
		}
		got, err := parseURI(u)
		switch {
		case tc.err != "" && err == nil:
			t.Errorf("parseURI(%s) = %+v, want an error saying %q", tc.uri, got, tc.err)
		case tc.err != "" && !strings.Contains(err.Error(), tc.err):
			t.Errorf("parseURI(%s): %v, want it to say %q", tc.uri, err, tc.err)
		case tc.err != "" && !errors.Is(err, sinks.ErrInvalidLocation):
			t.Errorf("parseURI(%s): %v does not match sinks.ErrInvalidLocation", tc.uri, err)
		case tc.err != "" && strings.Contains(err.Error(), "secret"):
			t.Errorf("parseURI(%s): message shows the secret: %v", tc.uri, err)
		case tc.err == "" && err != nil:
			t.Errorf("parseURI(%s): %v", tc.uri, err)
		case tc.err == "" && got != tc.want:
			t.Errorf("parseURI(%s) = %+v, want %+v", tc.uri, got, tc.want)
		}
	}
}
