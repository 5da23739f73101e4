package sinks

import (
	"context"
	"errors"
	"net/url"
	"time"
)

// StoreObserver is told the backend ("s3", "file"), operation, duration and outcome
// of every store request.
type StoreObserver func(backend, op string, d time.Duration, err error)

// Instrumented wraps s so that every request is reported to observe, the way
// restic wraps its backends: the store itself knows nothing of metrics.
func Instrumented(s Store, observe StoreObserver) Store {
	if observe == nil {
		return s
	}
	backend := "store"
	if u, err := url.Parse(s.Location()); err == nil && u.Scheme != "" {
		backend = u.Scheme
	}
	return &instrumentedStore{Store: s, backend: backend, observe: observe}
}

type instrumentedStore struct {
	Store
	backend string
	observe StoreObserver
}

func (s *instrumentedStore) done(op string, start time.Time, err error) {
	// A missing object or a lost conditional put is an answer, not a failure.
	if errors.Is(err, ErrNotFound) || errors.Is(err, ErrExists) {
		err = nil
	}
	s.observe(s.backend, op, time.Since(start), err)
}

func (s *instrumentedStore) Put(ctx context.Context, name string, data []byte) error {
	start := time.Now()
	err := s.Store.Put(ctx, name, data)
	s.done("put", start, err)
	return err
}

func (s *instrumentedStore) PutIfAbsent(ctx context.Context, name string, data []byte) error {
	start := time.Now()
	err := s.Store.PutIfAbsent(ctx, name, data)
	s.done("put_if_absent", start, err)
	return err
}

func (s *instrumentedStore) Get(ctx context.Context, name string, limit int64) ([]byte, error) {
	start := time.Now()
	b, err := s.Store.Get(ctx, name, limit)
	s.done("get", start, err)
	return b, err
}

func (s *instrumentedStore) GetInto(ctx context.Context, name string, buf []byte, limit int64) ([]byte, error) {
	start := time.Now()
	b, err := GetInto(ctx, s.Store, name, buf, limit)
	s.done("get", start, err)
	return b, err
}

func (s *instrumentedStore) Exists(ctx context.Context, name string) (bool, error) {
	start := time.Now()
	ok, err := s.Store.Exists(ctx, name)
	s.done("exists", start, err)
	return ok, err
}

func (s *instrumentedStore) List(ctx context.Context, prefix string, fn func(string) error) error {
	start := time.Now()
	err := s.Store.List(ctx, prefix, fn)
	s.done("list", start, err)
	return err
}

func (s *instrumentedStore) Delete(ctx context.Context, name string) error {
	start := time.Now()
	err := s.Store.Delete(ctx, name)
	s.done("delete", start, err)
	return err
}

func (s *instrumentedStore) ListInfo(ctx context.Context, prefix string, fn func(ObjectInfo) error) error {
	start := time.Now()
	err := s.Store.ListInfo(ctx, prefix, fn)
	s.done("list", start, err)
	return err
}

func (s *instrumentedStore) DeleteObjects(ctx context.Context, names []string) error {
	start := time.Now()
	err := s.Store.DeleteObjects(ctx, names)
	s.done("delete_objects", start, err)
	return err
}
