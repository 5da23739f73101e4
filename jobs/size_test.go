package jobs

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestParseByteSize(t *testing.T) {
	cases := []struct {
		in   string
		want int64
		err  string // part of the error; "" when in is valid
	}{
		{"1048576", 1 << 20, ""},
		{"1", 1, ""},
		{"64KiB", 64 << 10, ""},
		{"4MiB", 4 << 20, ""},
		{"4 MiB", 4 << 20, ""},
		{"200MiB", 200 << 20, ""},
		{" 200MiB ", 200 << 20, ""},
		{"10 KiB", 10240, ""},
		{"1.5GiB", 3 << 29, ""},
		{"2TiB", 2 << 40, ""},
		{"512Mi", 512 << 20, ""},
		{"1Gi", 1 << 30, ""},
		{"50M", 50_000_000, ""},
		{"1G", 1_000_000_000, ""},
		{"1GB", 1_000_000_000, ""},
		{"2.5KB", 2500, ""},
		{"10B", 10, ""},
		{"0.5KiB", 512, ""},
		{"9223372036854775807", 1<<63 - 1, ""},
		{"8388607TiB", 8388607 << 40, ""},

		{"", 0, "want digits"},
		{"MiB", 0, "want digits"},
		{"fast", 0, "want digits"},
		{"5XB", 0, "unknown unit"},
		{"-5M", 0, "negative"},
		{"NaN", 0, "want digits"},
		{"nan", 0, "want digits"},
		{"Inf", 0, "want digits"},
		{"-1", 0, "negative"},
		{"-4MiB", 0, "negative"},
		{"+4MiB", 0, "want digits"},
		{"0", 0, "zero"},
		{"0MiB", 0, "zero"},
		{"1.5", 0, "whole number of bytes"},
		{"0.1KiB", 0, "whole number of bytes"},
		{"1.0000001MB", 0, "whole number of bytes"},
		{"1e6", 0, "want digits"},
		{"0x10", 0, "want digits"},
		{"1.", 0, "want digits"},
		{".5MiB", 0, "want digits"},
		{"4mib", 0, "unknown unit"},
		{"4MiBs", 0, "unknown unit"},
		{"4  MiB", 0, "want digits"},
		{"9223372036854775808", 0, "too large"},
		{"8388608TiB", 0, "too large"},
		{"99999999999999999999TB", 0, "too large"},
		{strings.Repeat("9", 100), 0, "too long"},
	}
	for _, c := range cases {
		got, err := ParseByteSize(c.in)
		switch {
		case c.err == "" && (err != nil || got != c.want):
			t.Errorf("ParseByteSize(%q) = %d, %v; want %d", c.in, got, err, c.want)
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("ParseByteSize(%q) = %d, %v; want an error saying %q", c.in, got, err, c.err)
		}
	}
}

// TestByteSizeRoundTrip: what String writes (flag defaults, the rate limit a
// submitted job carries) reads back as the same size.
func TestByteSizeRoundTrip(t *testing.T) {
	for _, n := range []ByteSize{1, 1000, 1024, 65536, 4 << 20, 200 << 20, 3 << 29, 5 << 40, 4_000_000, 1<<63 - 1} {
		var back ByteSize
		if err := back.Set(n.String()); err != nil || back != n {
			t.Errorf("%d: String %q reads back as %d, %v", int64(n), n.String(), int64(back), err)
		}
	}
	if s := ByteSize(4 << 20).String(); s != "4MiB" {
		t.Errorf("4MiB is shown as %q", s)
	}
}

func TestByteSizeJSON(t *testing.T) {
	cases := []struct {
		in   string
		want ByteSize
		ok   bool
	}{
		{`4194304`, 4 << 20, true},
		{`"4MiB"`, 4 << 20, true},
		{`"65536"`, 64 << 10, true},
		{`0`, 0, true}, // an omitted option's zero
		{`null`, 0, true},
		{`"0"`, 0, false},
		{`-1`, 0, false},
		{`1.5`, 0, false},
		{`4.194304e6`, 0, false},
		{`"NaN"`, 0, false},
		{`true`, 0, false},
		{`9223372036854775808`, 0, false},
	}
	for _, c := range cases {
		var got ByteSize
		err := json.Unmarshal([]byte(c.in), &got)
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("%s: got %d, %v; want %d (accepted: %t)", c.in, int64(got), err, int64(c.want), c.ok)
		}
	}
	out, _ := json.Marshal(Options{ChunkSize: 4 << 20})
	if string(out) != `{"chunk_size":4194304}` {
		t.Errorf("options marshal as %s: a chunk size goes out as a number, which workers of every version read", out)
	}
}
