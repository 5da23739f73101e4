// Package sinks holds where backups are kept: the object Store interface, its
// registry of URI schemes, the wrappers around it (Instrumented) and the
// sentinels every implementation returns. The file and S3 stores live in
// subpackages; the repository format built on any Store is package
// sinks/repository, which no store imports.
package sinks

import (
	"context"
	"errors"
	"time"
)

// Store is a flat namespace of immutable objects, addressed by slash-separated
// names such as "chunks/ab/abcdef…". Implementations must be safe for concurrent use.
type Store interface {
	// Put stores data under name, replacing what is there. It does not keep data
	// after it returns, so the caller may reuse the buffer.
	Put(ctx context.Context, name string, data []byte) error
	// PutIfAbsent stores data under name only if nothing is there yet; it returns
	// ErrExists otherwise. Manifests and the config are written this way.
	PutIfAbsent(ctx context.Context, name string, data []byte) error
	// Get returns the whole object in a new slice the caller owns (it may modify
	// it); ErrNotFound if there is none. An object of more than limit bytes is
	// not read: Get returns ErrInvalidObject having allocated no more than limit
	// bytes for it, so that an object planted in a store, or a size a server
	// claims, cannot make the reader allocate what it likes.
	Get(ctx context.Context, name string, limit int64) ([]byte, error)
	// Exists reports whether an object is stored under name.
	Exists(ctx context.Context, name string) (bool, error)
	// List calls fn with the name of every object whose name starts with prefix, in
	// no particular order. fn returning an error stops the listing with that error.
	List(ctx context.Context, prefix string, fn func(name string) error) error
	// ListInfo is List with each object's size and modification time. Garbage
	// collection compares modification times of objects with each other only (all
	// come from the store's clock), never with the local clock.
	ListInfo(ctx context.Context, prefix string, fn func(ObjectInfo) error) error
	// Delete removes the object; deleting a missing object is not an error.
	Delete(ctx context.Context, name string) error
	// DeleteObjects removes every named object, in batches where the store has
	// them (S3 DeleteObjects, 1000 keys a request); missing objects are not errors.
	DeleteObjects(ctx context.Context, names []string) error
	// Location is the store's URI without credentials, for messages.
	Location() string
}

// BufferGetter is implemented by stores that can read an object into the
// caller's buffer, which saves a fresh allocation (and its page faults) per
// object read: GetInto is Get returning the object in buf's capacity when it
// fits, else in a new slice.
type BufferGetter interface {
	GetInto(ctx context.Context, name string, buf []byte, limit int64) ([]byte, error)
}

// GetInto reads object name, of at most limit bytes, from s into buf's capacity
// when s can, else with Get.
func GetInto(ctx context.Context, s Store, name string, buf []byte, limit int64) ([]byte, error) {
	if bg, ok := s.(BufferGetter); ok {
		return bg.GetInto(ctx, name, buf, limit)
	}
	return s.Get(ctx, name, limit)
}

// ObjectInfo describes a stored object, as ListInfo reports it.
type ObjectInfo struct {
	Name    string
	Size    int64
	ModTime time.Time // when the object was last written, by the store's clock
}

var (
	// ErrNotFound: no object of that name.
	ErrNotFound = errors.New("object not found")
	// ErrExists: a conditional put found an object already there.
	ErrExists = errors.New("object already exists")
	// ErrNoRepository: the store holds no repository (no config object), or the
	// bucket or directory does not exist.
	ErrNoRepository = errors.New("repository does not exist")
	// ErrAccessDenied: the store refused our credentials.
	ErrAccessDenied = errors.New("access denied")
	// ErrInvalidLocation: a repository URI that names no usable store: an unknown
	// scheme or parameter, credentials in the URI, a file that is no directory,
	// or a store configuration that lacks what it needs (an S3 region).
	ErrInvalidLocation = errors.New("invalid repository location")
	// ErrInvalidObject: what is stored under a name cannot be an object a writer
	// made: larger than its reader's limit, or (file store) not a regular file.
	ErrInvalidObject = errors.New("invalid stored object")
	// ErrBadAnswer: the store's server answered outside its protocol (an answer
	// larger than any it may send, a listing that would never end). The same
	// request would get the same answer: nothing to retry.
	ErrBadAnswer = errors.New("store server answered outside its protocol")
)
