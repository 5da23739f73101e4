package repository

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
)

// dataKeys are the random keys that protect a repository's content. They never
// leave the process unwrapped: the config stores them sealed with a key derived from
// the user's key material, so the user's key can change without re-encrypting data.
type dataKeys struct {
	Encryption [32]byte `json:"encryption"` // AES-256-GCM key for objects
	ID         [32]byte `json:"id"`         // BLAKE3 key for chunk ids
}

// Encryption describes how a repository is encrypted; it is part of the config.
type Encryption struct {
	Cipher     string `json:"cipher"`     // "aes-256-gcm"
	KDF        string `json:"kdf"`        // "pbkdf2-sha256"
	Iterations int    `json:"iterations"` // KDF work factor
	Salt       []byte `json:"salt"`       // KDF salt (base64 in JSON)
	WrappedKey []byte `json:"wrapped_key"`
}

const (
	cipherAES256GCM = "aes-256-gcm"
	kdfPBKDF2       = "pbkdf2-sha256"
	// Key material is usually a random key file, but may be a passphrase; the KDF
	// makes guessing a weak one expensive. It runs once per repository open.
	kdfIterations = 300_000
	// maxKDFIterations bounds what a config may ask for: the KDF cannot be
	// interrupted, so a config asking for 2^40 iterations would hold every job
	// that opens the repository for days. Ten million take a few seconds.
	maxKDFIterations = 10_000_000
	minKeyLength     = 8
)

func newEncryption(secret []byte) (*Encryption, *dataKeys, error) {
	if len(secret) < minKeyLength {
		return nil, nil, fmt.Errorf("encryption key too short: at least %d bytes", minKeyLength)
	}
	var keys dataKeys
	rand.Read(keys.Encryption[:])
	rand.Read(keys.ID[:])
	e := &Encryption{Cipher: cipherAES256GCM, KDF: kdfPBKDF2, Iterations: kdfIterations, Salt: make([]byte, 32)}
	rand.Read(e.Salt)
	aead, err := e.keyEncryptionCipher(secret)
	if err != nil {
		return nil, nil, err
	}
	plain, err := json.Marshal(keys)
	if err != nil {
		return nil, nil, err
	}
	nonce := make([]byte, aead.NonceSize())
	rand.Read(nonce)
	e.WrappedKey = aead.Seal(nonce, nonce, plain, []byte("blockferry keys"))
	return e, &keys, nil
}

// validate checks what can be checked without the key: the cipher, the KDF and
// its work factor.
func (e *Encryption) validate() error {
	switch {
	case e.Cipher != cipherAES256GCM || e.KDF != kdfPBKDF2:
		return fmt.Errorf("unsupported encryption %s/%s", e.Cipher, e.KDF)
	case e.Iterations < 1 || e.Iterations > maxKDFIterations:
		return fmt.Errorf("key derivation with %d iterations: from 1 to %d are supported", e.Iterations, maxKDFIterations)
	}
	return nil
}

func (e *Encryption) keyEncryptionCipher(secret []byte) (cipher.AEAD, error) {
	if err := e.validate(); err != nil {
		return nil, err
	}
	kek, err := pbkdf2.Key(sha256.New, string(secret), e.Salt, e.Iterations, 32)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(kek)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// unwrap recovers the data keys with the user's key material.
func (e *Encryption) unwrap(secret []byte) (*dataKeys, error) {
	if len(secret) == 0 {
		return nil, ErrKeyRequired
	}
	aead, err := e.keyEncryptionCipher(secret)
	if err != nil {
		return nil, err
	}
	ns := aead.NonceSize()
	if len(e.WrappedKey) < ns {
		return nil, errors.New("config: wrapped key too short")
	}
	plain, err := aead.Open(nil, e.WrappedKey[:ns], e.WrappedKey[ns:], []byte("blockferry keys"))
	if err != nil {
		return nil, ErrWrongKey
	}
	var keys dataKeys
	if err := json.Unmarshal(plain, &keys); err != nil {
		return nil, fmt.Errorf("config: wrapped key: %w", err)
	}
	return &keys, nil
}
