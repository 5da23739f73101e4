package jobs

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestMemoryBudget(t *testing.T) {
	b := NewMemoryBudget(100)
	ctx := context.Background()
	r1, err := b.reserve(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	// 60 + 60 does not fit: the second waits until the first gives its bytes back.
	got := make(chan struct{})
	go func() {
		r2, err := b.reserve(ctx, 60)
		if err != nil {
			t.Error(err)
			return
		}
		close(got)
		r2()
	}()
	select {
	case <-got:
		t.Fatal("a reservation beyond the budget did not wait")
	case <-time.After(50 * time.Millisecond):
	}
	r1()
	select {
	case <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("a waiting reservation was not served when room was made")
	}
	// More than the whole budget takes all of it, rather than waiting forever.
	all, err := b.reserve(ctx, 500)
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := b.reserve(short, 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("reserve in a full budget: %v, want the context's end", err)
	}
	all()
	if b.Peak() != 100 {
		t.Errorf("peak %d, want 100", b.Peak())
	}
	// A nil budget bounds nothing.
	var none *MemoryBudget
	if release, err := none.reserve(ctx, 1<<40); err != nil {
		t.Fatal(err)
	} else {
		release()
	}
}
