package repository

import (
	"bytes"
	"math/rand/v2"
	"testing"
)

// Hot paths of a backup and a restore, per 4 MiB chunk, in benchstat-friendly form:
//
//	go test -run '^$' -bench . -count 6 ./sinks/repository | tee new.txt; benchstat old.txt new.txt
func benchChunks() map[string][]byte {
	const size = 4 << 20
	noise := make([]byte, size)
	rand.NewChaCha8([32]byte{3}).Read(noise)
	var text bytes.Buffer
	for i := 0; text.Len() < size; i++ {
		text.WriteString("line ")
		text.WriteString(string(rune('a' + i%26)))
		text.WriteString(" of a log file with a counter ")
		text.WriteString(string(rune('0' + i%10)))
		text.WriteByte('\n')
	}
	return map[string][]byte{"random": noise, "text": text.Bytes()[:size]}
}

func BenchmarkChunkID(b *testing.B) {
	data := benchChunks()["random"]
	for _, keyed := range []bool{false, true} {
		var keys *dataKeys
		name := "plain"
		if keyed {
			keys, name = &dataKeys{}, "keyed"
		}
		c, _ := newCodec(keys)
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				c.ID(data)
			}
		})
	}
}

func BenchmarkSeal(b *testing.B) {
	for name, data := range benchChunks() {
		for _, enc := range []bool{false, true} {
			var keys *dataKeys
			label := name + "/plain"
			if enc {
				keys, label = &dataKeys{}, name+"/aes-gcm"
			}
			c, _ := newCodec(keys)
			b.Run(label, func(b *testing.B) {
				b.SetBytes(int64(len(data)))
				buf := make([]byte, 0, SealedSize(len(data)))
				for b.Loop() {
					buf = c.Seal(buf, data, "chunk:x", true)
				}
			})
		}
	}
}

func BenchmarkOpen(b *testing.B) {
	for name, data := range benchChunks() {
		c, _ := newCodec(nil)
		obj := c.Seal(nil, data, "chunk:x", true)
		buf := make([]byte, 0, len(data))
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				if _, err := c.Open(obj, "chunk:x", buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
