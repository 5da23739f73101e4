package backends

import (
	"context"
	"fmt"
	"net/url"
	"sync"
)

// SourceOpener opens a source from a parsed URI.
type SourceOpener func(ctx context.Context, u *url.URL, o SourceOptions) (Source, error)

// TargetOpener opens a target from a parsed URI.
type TargetOpener func(ctx context.Context, u *url.URL, o TargetOptions) (Target, error)

var (
	registryMu sync.RWMutex
	sources    = map[string]SourceOpener{}
	targets    = map[string]TargetOpener{}
)

// Register makes a device kind available under the URI schemes given, the way
// database/sql drivers register. Either opener may be nil.
func Register(src SourceOpener, tgt TargetOpener, schemes ...string) {
	registryMu.Lock()
	defer registryMu.Unlock()
	for _, s := range schemes {
		if src != nil {
			sources[s] = src
		}
		if tgt != nil {
			targets[s] = tgt
		}
	}
}

// OpenSource opens the disk image at uri for reading.
func OpenSource(ctx context.Context, uri string, opts ...SourceOption) (Source, error) {
	var o SourceOptions
	for _, opt := range opts {
		opt(&o)
	}
	u, err := url.Parse(uri)
	if err != nil {
		return nil, fmt.Errorf("source %q: %w", uri, err)
	}
	registryMu.RLock()
	open, ok := sources[u.Scheme]
	registryMu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("source %q: %w %q", uri, ErrUnsupportedScheme, u.Scheme)
	}
	return open(ctx, u, o)
}

// OpenTarget opens the disk image at uri for writing.
func OpenTarget(ctx context.Context, uri string, opts ...TargetOption) (Target, error) {
	var o TargetOptions
	for _, opt := range opts {
		opt(&o)
	}
	u, err := url.Parse(uri)
	if err != nil {
		return nil, fmt.Errorf("target %q: %w", uri, err)
	}
	registryMu.RLock()
	open, ok := targets[u.Scheme]
	registryMu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("target %q: %w %q", uri, ErrUnsupportedScheme, u.Scheme)
	}
	return open(ctx, u, o)
}
