package jobs

import (
	"errors"
	"strings"
	"testing"
)

func TestDecodeSpec(t *testing.T) {
	const good = `{"spec_version":1,"id":"vm1042-vda-20261124T0200","kind":"backup","disk":"vm-1042/vda",
		"source":{"uri":"nbd+unix:///vda?socket=/run/b.sock","bitmap":"chk-1"},"parent":"01JD0000000000000000000000",
		"options":{"chunk_size":4194304,"compression":"zstd","concurrency":8,"rate_limit":"200MiB"},"labels":{"vm":"1042"}}`
	s, err := DecodeSpec([]byte(good))
	if err != nil {
		t.Fatalf("good job: %v", err)
	}
	if s.Source.Bitmap != "chk-1" || s.Options.ChunkSize != 4<<20 || s.Labels["vm"] != "1042" {
		t.Errorf("decoded %+v", s)
	}
	withUnits := strings.Replace(good, `"chunk_size":4194304`, `"chunk_size":"4MiB"`, 1)
	if s, err := DecodeSpec([]byte(withUnits)); err != nil || s.Options.ChunkSize != 4<<20 {
		t.Errorf("chunk_size \"4MiB\": %d, %v", s.Options.ChunkSize, err)
	}

	serve := `{"spec_version":1,"id":"s1","kind":"serve","backup":"b","listen":"unix:///run/bf/s1.sock","options":{"lifetime":"90m","concurrency":4}}`
	if s, err := DecodeSpec([]byte(serve)); err != nil || s.Listen != "unix:///run/bf/s1.sock" || s.Options.Lifetime != "90m" {
		t.Errorf("serve job: %+v, %v", s, err)
	}

	bad := []struct {
		name, doc, id string
	}{
		{"malformed", `{"spec_version":1,"id":"j1",`, ""},
		{"unknown field", `{"spec_version":1,"id":"j2","kind":"verify","backup":"b1","surprise":1}`, "j2"},
		{"unknown kind", `{"spec_version":1,"id":"j3","kind":"defrag"}`, "j3"},
		{"no source", `{"spec_version":1,"id":"j4","kind":"backup","disk":"d"}`, "j4"},
		{"long id", `{"spec_version":1,"id":"` + strings.Repeat("x", 129) + `","kind":"verify","backup":"b"}`, ""},
		{"bad id chars", `{"spec_version":1,"id":"a b","kind":"verify","backup":"b"}`, ""},
		{"spec version", `{"spec_version":2,"id":"j5","kind":"verify","backup":"b"}`, "j5"},
		{"bitmap without parent", `{"spec_version":1,"id":"j6","kind":"backup","disk":"d","source":{"uri":"nbd://h","bitmap":"b"}}`, "j6"},
		{"bad chunk size", `{"spec_version":1,"id":"j7","kind":"backup","disk":"d","source":{"uri":"nbd://h"},"options":{"chunk_size":1000}}`, "j7"},
		{"chunk size in decimal units", `{"spec_version":1,"id":"j13","kind":"backup","disk":"d","source":{"uri":"nbd://h"},"options":{"chunk_size":"4M"}}`, "j13"},
		{"negative chunk size", `{"spec_version":1,"id":"j14","kind":"backup","disk":"d","source":{"uri":"nbd://h"},"options":{"chunk_size":-4194304}}`, "j14"},
		{"fractional chunk size", `{"spec_version":1,"id":"j15","kind":"backup","disk":"d","source":{"uri":"nbd://h"},"options":{"chunk_size":"1.5"}}`, "j15"},
		{"bad rate", `{"spec_version":1,"id":"j8","kind":"backup","disk":"d","source":{"uri":"nbd://h"},"options":{"rate_limit":"fast"}}`, "j8"},
		{"restore with a chunk size", `{"spec_version":1,"id":"j12","kind":"restore","backup":"b","target":{"uri":"file:///x"},"options":{"chunk_size":65536}}`, "j12"},
		{"trailing data", `{"spec_version":1,"id":"j9","kind":"verify","backup":"b"} {}`, "j9"},
		{"trailing data, bad id", `{"spec_version":1,"id":"bad.>","kind":"verify","backup":"b"} {}`, ""},
		{"disk path escape", `{"spec_version":1,"id":"j10","kind":"backup","disk":"../etc","source":{"uri":"nbd://h"}}`, "j10"},
		{"serve without listen", `{"spec_version":1,"id":"j16","kind":"serve","backup":"b"}`, "j16"},
		{"serve on a bad address", `{"spec_version":1,"id":"j17","kind":"serve","backup":"b","listen":"http://h/x"}`, "j17"},
		{"serve with a target", `{"spec_version":1,"id":"j18","kind":"serve","backup":"b","listen":"unix:///x.sock","target":{"uri":"file:///x"}}`, "j18"},
		{"serve with a bad lifetime", `{"spec_version":1,"id":"j19","kind":"serve","backup":"b","listen":"unix:///x.sock","options":{"lifetime":"-1h"}}`, "j19"},
		{"lifetime of a restore", `{"spec_version":1,"id":"j20","kind":"restore","backup":"b","target":{"uri":"file:///x"},"options":{"lifetime":"1h"}}`, "j20"},
		{"oversized", `{"spec_version":1,"id":"j11","kind":"verify","backup":"b","labels":{"x":"` + strings.Repeat("y", MaxSpecBytes) + `"}}`, ""},
	}
	for _, c := range bad {
		t.Run(c.name, func(t *testing.T) {
			s, err := DecodeSpec([]byte(c.doc))
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("err %v, want ErrInvalid", err)
			}
			if Classify(err).Code != CodeInvalidJob || Classify(err).Retryable {
				t.Errorf("classified %+v", Classify(err))
			}
			if s.ID != c.id {
				t.Errorf("id %q, want %q", s.ID, c.id)
			}
		})
	}
}
