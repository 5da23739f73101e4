package jobs

import (
	"errors"
	"testing"
)

func TestChainFieldsDecode(t *testing.T) {
	const good = `{"spec_version":1,"id":"inc-2","kind":"backup","disk":"vm-1042/vda",
		"source":{"uri":"nbd+unix:///vda?socket=/run/b.sock","bitmap":"backup-vda"},"parent":"01JD0000000000000000000000",
		"checkpoint":"vm1042-vda-2","since_checkpoint":"vm1042-vda-1","options":{"on_broken_chain":"fail"}}`
	s, err := DecodeSpec([]byte(good))
	if err != nil {
		t.Fatalf("good job: %v", err)
	}
	if s.Checkpoint != "vm1042-vda-2" || s.SinceCheckpoint != "vm1042-vda-1" || s.Options.OnBrokenChain != OnBrokenChainFail {
		t.Errorf("decoded %+v", s)
	}
	bad := map[string]string{
		"since without parent": `{"spec_version":1,"id":"j1","kind":"backup","disk":"d","source":{"uri":"nbd://h"},"since_checkpoint":"c1"}`,
		"unknown policy":       `{"spec_version":1,"id":"j2","kind":"backup","disk":"d","source":{"uri":"nbd://h"},"options":{"on_broken_chain":"retry"}}`,
		"slash in checkpoint":  `{"spec_version":1,"id":"j3","kind":"backup","disk":"d","source":{"uri":"nbd://h"},"checkpoint":"a/b"}`,
		"restore checkpoint":   `{"spec_version":1,"id":"j4","kind":"restore","backup":"b","target":{"uri":"file:///x"},"checkpoint":"c1"}`,
		"verify policy":        `{"spec_version":1,"id":"j5","kind":"verify","backup":"b","options":{"on_broken_chain":"full"}}`,
	}
	for name, doc := range bad {
		t.Run(name, func(t *testing.T) {
			if _, err := DecodeSpec([]byte(doc)); !errors.Is(err, ErrInvalid) {
				t.Fatalf("err %v, want ErrInvalid", err)
			}
		})
	}
	// A full backup may start a checkpoint: the first link of a chain.
	full := `{"spec_version":1,"id":"full-1","kind":"backup","disk":"d","source":{"uri":"nbd://h"},"checkpoint":"c1"}`
	if _, err := DecodeSpec([]byte(full)); err != nil {
		t.Errorf("full backup starting a checkpoint: %v", err)
	}
}
