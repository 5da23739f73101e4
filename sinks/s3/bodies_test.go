package s3

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/blockferry/blockferry/internal/testutil"
	"github.com/blockferry/blockferry/sinks"
)

// hugeBodySize is the size of the hostile bodies below: far beyond every bound,
// small enough that the unbounded client they catch copes in a test.
const hugeBodySize = 48 << 20

// hugeAnswer answers every request with status and a body of hugeBodySize
// bytes: start, then padding, then end. It counts the requests.
func hugeAnswer(requests *atomic.Int32, status int, start, end string) http.HandlerFunc {
	pad := bytes.Repeat([]byte("A"), 1<<20)
	return func(w http.ResponseWriter, _ *http.Request) {
		requests.Add(1)
		w.Header().Set("Content-Type", "application/xml")
		w.WriteHeader(status)
		_, _ = w.Write([]byte(start))
		for range hugeBodySize >> 20 {
			if _, err := w.Write(pad); err != nil {
				return
			}
		}
		_, _ = w.Write([]byte(end))
	}
}

// TestErrorAnswersBounded: an error answer with a huge body costs the client
// little memory and becomes a short error that still carries the server's code
// (or, without one, the status's meaning), and a 4xx is not retried.
func TestErrorAnswersBounded(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status int
		start  string
		check  func(error) bool
	}{
		{"400 with a code and a huge message", http.StatusBadRequest, "<Error><Code>Nope</Code><Message>ordered by ",
			func(err error) bool {
				msg := err.Error()
				return strings.Contains(msg, "Nope") && strings.Contains(msg, "ordered by AAA") && strings.Contains(msg, "longer than 64 KiB")
			}},
		{"404 without a code", http.StatusNotFound, "<Error><Message>",
			func(err error) bool { return errors.Is(err, sinks.ErrNotFound) }},
		{"403 without a code", http.StatusForbidden, "<Error><Message>",
			func(err error) bool { return errors.Is(err, sinks.ErrAccessDenied) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var requests atomic.Int32
			s := startFakeServer(t, &fakeS3{}, httptest.NewServer(hugeAnswer(&requests, tc.status, tc.start, "</Message></Error>")))
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			var err error
			n := testutil.Allocated(func() { _, err = s.Get(ctx, "chunks/x", 4<<20) })
			if err == nil || !tc.check(err) {
				t.Fatalf("Get: %v", err)
			}
			if len(err.Error()) > 2*errorTextLimit+512 {
				t.Errorf("an error of %d bytes: %.200s…", len(err.Error()), err)
			}
			if n > 4<<20 {
				t.Errorf("Get allocated %d MiB for an error answer", n>>20)
			}
			if got := requests.Load(); got != 1 {
				t.Errorf("%d requests, want 1: an error answer cut short must not be retried", got)
			}
			t.Logf("%v", err)
		})
	}
}

// TestListAnswerBounded: a listing page longer than answerBodyLimit fails the
// listing, at once and with little memory.
func TestListAnswerBounded(t *testing.T) {
	var requests atomic.Int32
	s := startFakeServer(t, &fakeS3{}, httptest.NewServer(hugeAnswer(&requests, http.StatusOK,
		`<ListBucketResult><Name>`, `</Name><IsTruncated>false</IsTruncated></ListBucketResult>`)))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var err error
	n := testutil.Allocated(func() { err = s.List(ctx, "", func(string) error { return nil }) })
	if !errors.Is(err, sinks.ErrBadAnswer) || !strings.Contains(err.Error(), "ListObjectsV2 answer longer than 16 MiB") {
		t.Fatalf("List: %v", err)
	}
	if n > 4*answerBodyLimit {
		t.Errorf("List allocated %d MiB for a page", n>>20)
	}
	if got := requests.Load(); got != 1 {
		t.Errorf("%d requests, want 1", got)
	}
}

// TestGetBodiesNotCut: the bound of other answers does not apply to objects,
// which readBody bounds.
func TestGetBodiesNotCut(t *testing.T) {
	f := &fakeS3{}
	s := startFake(t, f)
	want := bytes.Repeat([]byte("chunk"), (answerBodyLimit+1<<20)/5)
	if err := s.Put(context.Background(), "chunks/big", want); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(context.Background(), "chunks/big", 1<<30)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("Get of %d bytes: %d bytes, %v", len(want), len(got), err)
	}
}
