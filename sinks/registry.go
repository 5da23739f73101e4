package sinks

import (
	"context"
	"fmt"
	"net/url"
	"sync"
)

// StoreOpener opens a store from a parsed URI.
type StoreOpener func(ctx context.Context, u *url.URL) (Store, error)

var (
	registryMu sync.RWMutex
	openers    = map[string]StoreOpener{}
)

// RegisterStore makes a store kind available under a URI scheme, the way
// database/sql drivers register.
func RegisterStore(scheme string, open StoreOpener) {
	registryMu.Lock()
	defer registryMu.Unlock()
	openers[scheme] = open
}

// OpenStore opens the store a repository URI names ("file:///srv/bf",
// "s3://bucket/prefix?endpoint=…").
func OpenStore(ctx context.Context, uri string) (Store, error) {
	u, err := url.Parse(uri)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidLocation, err)
	}
	if u.Scheme == "" && u.Path != "" { // a plain path is a file repository
		u.Scheme = "file"
	}
	registryMu.RLock()
	open, ok := openers[u.Scheme]
	registryMu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("repository %s: %w: unsupported scheme %q (want file or s3)", u.Redacted(), ErrInvalidLocation, u.Scheme)
	}
	return open(ctx, u)
}
