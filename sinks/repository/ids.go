package repository

import (
	"errors"
	"fmt"
	"regexp"
)

// MaxIDLength bounds job ids, backup ids and checkpoint names.
const MaxIDLength = 128

// idPattern is what job ids, backup ids and checkpoint names may hold. They
// become object names, NATS subjects and key-value keys, so nothing that a path,
// a subject or a terminal could read as syntax is allowed.
var idPattern = regexp.MustCompile(`^[0-9A-Za-z][0-9A-Za-z._-]*$`)

// CheckID says why s cannot name a job, a backup or a checkpoint, or returns nil
// when it can. The error does not quote s, so callers decide how to show it.
func CheckID(s string) error {
	switch {
	case s == "":
		return errors.New("is required")
	case len(s) > MaxIDLength:
		return fmt.Errorf("is %d characters, at most %d", len(s), MaxIDLength)
	case !idPattern.MatchString(s):
		return errors.New("only letters, digits, '.', '_' and '-' are allowed, starting with a letter or digit")
	}
	return nil
}

// ValidID reports whether s can name a job, a backup or a checkpoint.
func ValidID(s string) bool { return CheckID(s) == nil }
