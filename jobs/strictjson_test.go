package jobs

import (
	"errors"
	"strings"
	"testing"
)

func TestDecodeSpecKeysExact(t *testing.T) {
	const tail = `"kind":"backup","disk":"d","source":{"uri":"nbd+unix:///x?socket=/run/x.sock"}}`
	bad := []struct {
		name, doc, id string
	}{
		{"upper-case key", `{"spec_version":1,"id":"k1","REPOSITORY":"file:///etc/cron.d",` + tail, "k1"},
		{"capitalised key", `{"spec_version":1,"id":"k2","kind":"backup","disk":"d","Source":{"uri":"file:///etc/shadow"},"source":{"uri":"nbd://h"}}`, "k2"},
		{"folded key (long s)", `{"spec_version":1,"id":"k3","kind":"backup","disk":"d","ſource":{"uri":"file:///etc/shadow"}}`, "k3"},
		{"folded nested key", `{"spec_version":1,"id":"k4","kind":"backup","disk":"d","source":{"URI":"file:///etc/shadow"}}`, "k4"},
		{"duplicate key", `{"spec_version":1,"id":"k5","repository":"prod","repository":"file:///etc/cron.d",` + tail, "k5"},
		{"duplicate nested key", `{"spec_version":1,"id":"k6","kind":"backup","disk":"d","source":{"uri":"nbd://h","uri":"file:///etc/shadow"}}`, "k6"},
		{"duplicate label", `{"spec_version":1,"id":"k7","labels":{"a":"1","a":"2"},` + tail, "k7"},
		{"duplicate id", `{"spec_version":1,"id":"k8","id":"other",` + tail, ""},
		{"upper-case id only", `{"spec_version":1,"ID":"k9",` + tail, ""},
		{"unknown option", `{"spec_version":1,"id":"k10","options":{"Concurrency":2},` + tail, "k10"},
		{"deep nesting", `{"spec_version":1,"id":"k11","labels":{"a":` + strings.Repeat("[", 100) + strings.Repeat("]", 100) + `},` + tail, "k11"},
	}
	for _, c := range bad {
		t.Run(c.name, func(t *testing.T) {
			s, err := DecodeSpec([]byte(c.doc))
			if !errors.Is(err, ErrInvalid) || Classify(err).Code != CodeInvalidJob {
				t.Fatalf("err %v (%+v), want invalid_job", err, Classify(err))
			}
			if s.ID != c.id {
				t.Errorf("id %q, want %q", s.ID, c.id)
			}
		})
	}
	// The same document spelled right decodes.
	if _, err := DecodeSpec([]byte(`{"spec_version":1,"id":"k0","repository":"prod","labels":{"a":"1","A":"2"},` + tail)); err != nil {
		t.Fatal(err)
	}
}

func TestQuoteShort(t *testing.T) {
	for in, want := range map[string]string{
		"plain":                 `"plain"`,
		"ſource\x1b[2J\n":       `"\u017fource\x1b[2J\n"`,
		strings.Repeat("é", 40): `"` + strings.Repeat(`\u00e9`, 32) + `"…`,
	} {
		if got := quoteShort(in); got != want {
			t.Errorf("quoteShort(%q) = %s, want %s", in, got, want)
		}
	}
}
