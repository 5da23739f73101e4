package embedded

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// TokenFileName is the file in the data directory that holds the token clients
// of the embedded server present.
const TokenFileName = "nats.token"

// TokenFile is the token file of a data directory.
func TokenFile(dataDir string) string { return filepath.Join(dataDir, TokenFileName) }

// Token returns the embedded server's client token from dataDir, generating it
// (256 random bits, in a file of mode 0600) when there is none.
func Token(dataDir string) (string, error) {
	path := TokenFile(dataDir)
	if err := os.MkdirAll(dataDir, 0o750); err != nil {
		return "", fmt.Errorf("embedded NATS token: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return ReadToken(path)
	}
	if err != nil {
		return "", fmt.Errorf("embedded NATS token: %w", err)
	}
	b := make([]byte, 32)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	token := hex.EncodeToString(b)
	if _, err := f.WriteString(token + "\n"); err != nil {
		f.Close()
		os.Remove(path)
		return "", fmt.Errorf("embedded NATS token: %w", err)
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("embedded NATS token: %w", err)
	}
	return token, nil
}

// ReadToken reads a token file, which only its owner may read.
func ReadToken(path string) (string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("NATS token: %w", err)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return "", fmt.Errorf("NATS token file %s is open to group or others (mode %04o): chmod 600 it", path, perm)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("NATS token: %w", err)
	}
	token := strings.TrimSpace(string(b))
	if token == "" {
		return "", fmt.Errorf("NATS token file %s is empty", path)
	}
	return token, nil
}
