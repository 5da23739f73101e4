package repository

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// FormatVersion is the repository format this code writes and reads.
const FormatVersion = 1

// The chunk sizes the format supports.
const (
	MinChunkSize = 64 << 10
	MaxChunkSize = 64 << 20
)

// Config is the "config" object: the repository's format and parameters. It is the
// only object stored in plain JSON, so that a reader can tell how to open the rest.
type Config struct {
	Version     int         `json:"version"`
	ID          string      `json:"id"`
	Created     time.Time   `json:"created"`
	ChunkHash   string      `json:"chunk_hash"`  // "blake3-256"; keyed when encrypted
	Compression string      `json:"compression"` // "zstd" or "none"
	ChunkSize   int64       `json:"chunk_size"`  // default for new backups
	Encryption  *Encryption `json:"encryption,omitempty"`
}

const hashBLAKE3 = "blake3-256"

func (c *Config) validate() error {
	switch {
	case c.Version != FormatVersion:
		return fmt.Errorf("repository format version %d is not supported (this blockferry reads %d)", c.Version, FormatVersion)
	case c.ChunkHash != hashBLAKE3:
		return fmt.Errorf("repository chunk hash %q is not supported", c.ChunkHash)
	case c.Compression != "zstd" && c.Compression != "none":
		return fmt.Errorf("repository compression %q is not supported", c.Compression)
	case !ValidChunkSize(c.ChunkSize):
		return fmt.Errorf("repository chunk size %d is not supported", c.ChunkSize)
	case c.Encryption != nil:
		return c.Encryption.validate()
	}
	return nil
}

// ValidChunkSize reports whether n is a power of two within the supported range.
func ValidChunkSize(n int64) bool {
	return n >= MinChunkSize && n <= MaxChunkSize && n&(n-1) == 0
}

// ErrUnsupportedFormat: the repository's config names a format or parameters this
// blockferry does not read (a newer format version, another hash).
var ErrUnsupportedFormat = errors.New("unsupported repository format")

func parseConfig(data []byte) (*Config, error) {
	var c Config
	if err := json.Unmarshal(data, &c); err != nil {
		return nil, fmt.Errorf("%w: config: %v", ErrCorrupt, err)
	}
	if err := c.validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnsupportedFormat, err)
	}
	return &c, nil
}
