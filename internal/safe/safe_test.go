package safe

import (
	"errors"
	"strings"
	"testing"

	"golang.org/x/sync/errgroup"
)

func TestGoTurnsAPanicIntoAnError(t *testing.T) {
	var g errgroup.Group
	Go(&g, func() error { return nil })
	Go(&g, func() error {
		var positions []int
		return errors.New(string(rune(positions[3]))) // index out of range
	})
	err := g.Wait()
	if !errors.Is(err, ErrPanic) {
		t.Fatalf("got %v, want an error wrapping ErrPanic", err)
	}
	if !strings.Contains(err.Error(), "index out of range") || !strings.Contains(err.Error(), "safe_test.go") {
		t.Errorf("the error should carry the panic's value and stack: %v", err)
	}
}

func TestCallPassesErrorsThrough(t *testing.T) {
	want := errors.New("plain")
	if err := Call(func() error { return want }); err != want {
		t.Errorf("got %v, want %v", err, want)
	}
}
