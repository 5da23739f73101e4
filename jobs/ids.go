package jobs

import (
	"crypto/rand"
	"time"

	"github.com/oklog/ulid/v2"
)

// NewBackupID returns a ULID: unique, and sorting by id sorts by creation time.
func NewBackupID() string {
	return ulid.MustNew(ulid.Timestamp(time.Now()), rand.Reader).String()
}
