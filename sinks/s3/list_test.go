package s3

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/blockferry/blockferry/sinks"
)

// pagingServer answers ListObjectsV2 with one key per page. next maps the
// continuation token of a request ("" for the first) to the token of its
// answer; a token absent from next ends the listing. truncatedWithout is a token
// whose answer says truncated yet carries no token.
type pagingServer struct {
	next             map[string]string
	truncatedWithout string
	requests         atomic.Int32
}

func (p *pagingServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := p.requests.Add(1)
	token := r.URL.Query().Get("continuation-token")
	next, truncated := p.next[token]
	if token != "" && token == p.truncatedWithout {
		next, truncated = "", true
	}
	w.Header().Set("Content-Type", "application/xml")
	fmt.Fprintf(w, `<ListBucketResult><Name>bkt</Name><Prefix>p/</Prefix><KeyCount>1</KeyCount><MaxKeys>1000</MaxKeys>`+
		`<IsTruncated>%v</IsTruncated><Contents><Key>p/k%d</Key><Size>1</Size></Contents>`, truncated, n)
	if next != "" {
		fmt.Fprintf(w, "<NextContinuationToken>%s</NextContinuationToken>", next)
	}
	fmt.Fprint(w, "</ListBucketResult>")
}

// TestListFollowsTokensOnce: a listing follows distinct continuation tokens to
// its end, and fails, rather than loop or stop short, on a truncated page whose
// token it followed before or that carries none.
func TestListFollowsTokensOnce(t *testing.T) {
	for _, tc := range []struct {
		name    string
		server  *pagingServer
		keys    int    // the keys listed
		failure string // "" for none
	}{
		{"distinct tokens", &pagingServer{next: map[string]string{"": "t1", "t1": "t2"}}, 3, ""},
		{"the same token again", &pagingServer{next: map[string]string{"": "t1", "t1": "t1"}}, 1, "token the listing followed before"},
		{"a cycle of tokens", &pagingServer{next: map[string]string{"": "t1", "t1": "t2", "t2": "t1"}}, 2, "token the listing followed before"},
		{"truncated without a token", &pagingServer{next: map[string]string{"": "t1"}, truncatedWithout: "t1"}, 1, "gave no continuation token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := startFakeServer(t, &fakeS3{}, httptest.NewServer(tc.server))
			// A listing that loops runs into this.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			var keys []string
			err := s.List(ctx, "", func(name string) error { keys = append(keys, name); return nil })
			switch {
			case tc.failure == "" && err != nil:
				t.Fatalf("List: %v", err)
			case tc.failure != "" && (!errors.Is(err, sinks.ErrBadAnswer) || !strings.Contains(err.Error(), tc.failure)):
				t.Fatalf("List: %v, want an error saying %q", err, tc.failure)
			}
			if want := tc.keys; len(keys) != want || !slices.IsSorted(keys) {
				t.Errorf("listed %q, want %d keys", keys, want)
			}
			if got, want := int(tc.server.requests.Load()), tc.keys+min(len(tc.failure), 1); got != want {
				t.Errorf("%d requests, want %d", got, want)
			}
		})
	}
}
