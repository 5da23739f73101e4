package repository

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/klauspost/compress/zstd"
	"github.com/zeebo/blake3"

	"github.com/blockferry/blockferry/internal/bigbuf"
)

// Object envelope (docs/FORMAT.md): the first byte says how the rest is stored.
const (
	envelopePlain     byte = 1 // 1 | compression | payload
	envelopeEncrypted byte = 2 // 2 | nonce(12) | AES-256-GCM(compression | payload)
)

// Compression of a payload inside the envelope.
const (
	compressionNone byte = 0
	compressionZstd byte = 1
)

// ChunkID is the BLAKE3-256 hash of a chunk's plaintext, keyed when the repository
// is encrypted.
type ChunkID [32]byte

// String is the lower-case hex form used in object names and manifests.
func (id ChunkID) String() string { return hex.EncodeToString(id[:]) }

// ParseChunkID reads the hex form.
func ParseChunkID(s string) (ChunkID, error) {
	var id ChunkID
	if len(s) != 64 {
		return id, fmt.Errorf("chunk id %q: want 64 hex digits", s)
	}
	if _, err := hex.Decode(id[:], []byte(s)); err != nil {
		return id, fmt.Errorf("chunk id %q: %w", s, err)
	}
	return id, nil
}

// ErrCorrupt: an object does not decode, or a chunk's content does not match its id.
var ErrCorrupt = errors.New("corrupt object")

// ErrWrongKey: the key given does not open the repository.
var ErrWrongKey = errors.New("wrong encryption key")

// ErrKeyRequired: the repository is encrypted and no key was given.
var ErrKeyRequired = errors.New("repository is encrypted: an encryption key is required")

// codec turns plaintext into stored objects and back. It is safe for concurrent use.
type codec struct {
	idKey []byte      // nil: unkeyed BLAKE3
	aead  cipher.AEAD // nil: no encryption
	enc   zstdEncoder
	// chunkDec decodes whole chunks: a chunk is at most MaxChunkSize, so a crafted
	// one cannot inflate past that. Manifests and checkpoints, which run to
	// gigabytes for a large disk at a small chunk size, are decoded as streams
	// instead (metaDecs), under the budget of decodeIndex.
	chunkDec *zstd.Decoder
	metaDecs sync.Pool // *zstd.Decoder, streaming
}

// maxMetadataWindow bounds the zstd window of a manifest or checkpoint, which is
// what a streaming decoder allocates: 8 MiB, the most RFC 8878 asks decoders to
// support. Writers use 512 KiB (level 1).
const maxMetadataWindow = 8 << 20

func newCodec(keys *dataKeys) (*codec, error) {
	chunkDec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(MaxChunkSize+1))
	if err != nil {
		return nil, err
	}
	c := &codec{chunkDec: chunkDec}
	if keys != nil {
		block, err := aes.NewCipher(keys.Encryption[:])
		if err != nil {
			return nil, err
		}
		if c.aead, err = cipher.NewGCM(block); err != nil {
			return nil, err
		}
		c.idKey = keys.ID[:]
	}
	return c, nil
}

// ID hashes a chunk's plaintext.
func (c *codec) ID(data []byte) ChunkID {
	var id ChunkID
	if c.idKey != nil {
		h, _ := blake3.NewKeyed(c.idKey) // the key is always 32 bytes
		h.Write(data)
		h.Sum(id[:0])
		return id
	}
	return ChunkID(blake3.Sum256(data))
}

// SealedSize bounds the size of an object sealed from n bytes of plaintext: the
// capacity a buffer passed to Seal needs so that Seal does not allocate.
func SealedSize(n int) int { return n + n/64 + 1024 }

// Seal encodes plaintext as a stored object, appending to dst[:0]. aad binds the
// object to its name, so that one object cannot be swapped for another. With a dst
// of capacity SealedSize(len(plaintext)) it allocates nothing: compression writes
// into dst, and encryption happens in place.
func (c *codec) Seal(dst, plaintext []byte, aad string, compress bool) []byte {
	if cap(dst) < SealedSize(len(plaintext)) {
		dst = bigbuf.Make(0, SealedSize(len(plaintext)))
	}
	dst = dst[:0]
	if c.aead == nil {
		dst = append(dst, envelopePlain)
	} else {
		dst = append(dst, envelopeEncrypted)
		nonce := dst[1 : 1+c.aead.NonceSize()]
		dst = dst[:1+len(nonce)]
		if _, err := rand.Read(nonce); err != nil {
			panic(fmt.Sprintf("crypto/rand: %v", err)) // never fails on Linux
		}
	}
	header := len(dst)
	dst = append(dst, compressionNone)
	stored := false
	if compress {
		dst[header] = compressionZstd
		dst = c.enc.appendCompressed(dst, plaintext)
		// Incompressible data is stored as it is: reading it back then costs nothing.
		stored = len(dst)-header-1 < len(plaintext)-len(plaintext)/32
	}
	if !stored {
		dst = append(dst[:header], compressionNone)
		dst = append(dst, plaintext...)
	}
	if c.aead == nil {
		return dst
	}
	// Seal in place: the ciphertext overwrites compression || payload.
	nonce := dst[1:header]
	return c.aead.Seal(dst[:header], nonce, dst[header:], []byte(aad))
}

// Open decodes a stored chunk into its plaintext, decompressing into dst's
// capacity when it is enough (a restore reuses its buffers: fresh 4 MiB ones cost
// more in page faults than decompression does). It decrypts obj in place.
func (c *codec) Open(obj []byte, aad string, dst []byte) ([]byte, error) {
	compression, payload, err := c.unseal(obj, aad)
	if err != nil {
		return nil, err
	}
	if compression == compressionNone {
		if cap(dst) >= len(payload) { // obj's buffer can then be reused
			return append(dst[:0], payload...), nil
		}
		return payload, nil
	}
	out, err := c.chunkDec.DecodeAll(payload, dst[:0])
	if err != nil {
		return nil, fmt.Errorf("%w: zstd: %v", ErrCorrupt, err)
	}
	return out, nil
}

// openStream returns a reader of a stored manifest's or checkpoint's plaintext,
// which decompresses only as far as it is read; release hands its decoder back.
// It decrypts obj in place.
func (c *codec) openStream(obj []byte, aad string) (plaintext io.Reader, release func(), err error) {
	compression, payload, err := c.unseal(obj, aad)
	if err != nil {
		return nil, nil, err
	}
	if compression == compressionNone {
		return bytes.NewReader(payload), func() {}, nil
	}
	dec, _ := c.metaDecs.Get().(*zstd.Decoder)
	if dec == nil {
		// One goroutine per decoder, no read-ahead beyond a block, and never the
		// whole object at once (WithDecodeBuffersBelow(0)): the caller's budget
		// decides how far it inflates.
		dec, err = zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(maxMetadataWindow),
			zstd.WithDecodeBuffersBelow(0))
		if err != nil {
			return nil, nil, err
		}
	}
	if err := dec.Reset(bytes.NewReader(payload)); err != nil {
		return nil, nil, fmt.Errorf("%w: zstd: %v", ErrCorrupt, err)
	}
	return dec, func() {
		_ = dec.Reset(nil) // drops payload; a nil reader is accepted
		c.metaDecs.Put(dec)
	}, nil
}

// unseal checks and opens an object's envelope, decrypting obj in place, and
// returns the payload with its compression.
func (c *codec) unseal(obj []byte, aad string) (compression byte, payload []byte, err error) {
	if len(obj) < 2 {
		return 0, nil, fmt.Errorf("%w: %d bytes", ErrCorrupt, len(obj))
	}
	var inner []byte
	switch obj[0] {
	case envelopePlain:
		if c.aead != nil {
			return 0, nil, fmt.Errorf("%w: unencrypted object in an encrypted repository", ErrCorrupt)
		}
		inner = obj[1:]
	case envelopeEncrypted:
		if c.aead == nil {
			return 0, nil, ErrKeyRequired
		}
		ns := c.aead.NonceSize()
		if len(obj) < 1+ns+c.aead.Overhead()+1 {
			return 0, nil, fmt.Errorf("%w: short encrypted object", ErrCorrupt)
		}
		inner, err = c.aead.Open(obj[1+ns:1+ns], obj[1:1+ns], obj[1+ns:], []byte(aad))
		if err != nil {
			return 0, nil, fmt.Errorf("%w: authentication failed", ErrCorrupt)
		}
	default:
		return 0, nil, fmt.Errorf("%w: unknown envelope %d", ErrCorrupt, obj[0])
	}
	switch inner[0] {
	case compressionNone, compressionZstd:
		return inner[0], inner[1:], nil
	default:
		return 0, nil, fmt.Errorf("%w: unknown compression %d", ErrCorrupt, inner[0])
	}
}
