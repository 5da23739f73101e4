package repository

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"testing"
)

func testData() (text, noise []byte) {
	text = bytes.Repeat([]byte("the quick brown fox jumps over the lazy dog\n"), 4096)
	noise = make([]byte, 128<<10)
	rand.NewChaCha8([32]byte{7}).Read(noise)
	return
}

func TestCodecRoundTrip(t *testing.T) {
	text, noise := testData()
	keys := &dataKeys{}
	keys.Encryption[0], keys.ID[0] = 1, 2
	for _, k := range []*dataKeys{nil, keys} {
		c, err := newCodec(k)
		if err != nil {
			t.Fatal(err)
		}
		for _, data := range [][]byte{text, noise} {
			for _, compress := range []bool{false, true} {
				obj := c.Seal(nil, data, "chunk:x", compress)
				got, err := c.Open(obj, "chunk:x", nil)
				if err != nil || !bytes.Equal(got, data) {
					t.Fatalf("keys %v compress %v: round trip failed: %v", k != nil, compress, err)
				}
				if k != nil {
					if _, err := c.Open(obj, "chunk:y", nil); !errors.Is(err, ErrCorrupt) {
						t.Errorf("object opened under another name: %v", err)
					}
				}
			}
		}
		if obj := c.Seal(nil, text, "a", true); len(obj) > len(text)/10 {
			t.Errorf("text compressed to %d of %d bytes", len(obj), len(text))
		}
		if obj := c.Seal(nil, noise, "a", true); len(obj) > len(noise)+64 {
			t.Errorf("noise grew to %d bytes", len(obj))
		}
	}
}

func TestChunkIDKeyed(t *testing.T) {
	text, _ := testData()
	plain, _ := newCodec(nil)
	keyed, _ := newCodec(&dataKeys{ID: [32]byte{9}})
	if plain.ID(text) == keyed.ID(text) {
		t.Fatal("keyed id equals the plain hash")
	}
	if keyed.ID(text) != keyed.ID(bytes.Clone(text)) {
		t.Fatal("keyed id not deterministic")
	}
	id, err := ParseChunkID(plain.ID(text).String())
	if err != nil || id != plain.ID(text) {
		t.Fatalf("parse: %v", err)
	}
}

func TestWrappedKeys(t *testing.T) {
	enc, keys, err := newEncryption([]byte("secret key material"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := enc.unwrap([]byte("secret key material"))
	if err != nil || *got != *keys {
		t.Fatalf("unwrap: %v", err)
	}
	if _, err := enc.unwrap([]byte("other key material")); !errors.Is(err, ErrWrongKey) {
		t.Errorf("wrong key: %v", err)
	}
	if _, err := enc.unwrap(nil); !errors.Is(err, ErrKeyRequired) {
		t.Errorf("no key: %v", err)
	}
}
