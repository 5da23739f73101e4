package repository

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sync"
	"time"

	"github.com/blockferry/blockferry/sinks"
	"golang.org/x/sync/singleflight"
)

// Object names inside a store (docs/FORMAT.md).
const (
	configName    = "config"
	chunksPrefix  = "chunks/"
	backupsPrefix = "backups/"
)

func chunkName(id ChunkID) string {
	h := id.String()
	return chunksPrefix + h[:2] + "/" + h
}

func manifestName(id string) string { return backupsPrefix + id }

// Additional authenticated data: binds an encrypted object to what it is.
func chunkAAD(id ChunkID) string   { return "chunk:" + id.String() }
func manifestAAD(id string) string { return "manifest:" + id }

// ErrBackupNotFound: no manifest of that id.
var ErrBackupNotFound = errors.New("backup not found")

// Repository is a chunk repository on a Store.
type Repository struct {
	store sinks.Store
	cfg   *Config
	codec *codec
	*chunkCache
	// gc is set on the copy of a repository that one backup attempt writes
	// through (BeginAttempt): it steers deduplication around condemned chunks.
	gc *GCView
}

// chunkCache is what the repository and the attempts' copies of it share.
type chunkCache struct {
	// known maps chunk ids this process has stored or seen stored to when it
	// asked the store (before the request), so that a chunk is looked up at most
	// once, and an attempt trusts only what was learnt after it began (a chunk
	// seen before may have been collected since).
	known    sync.Map
	inflight singleflight.Group
	// sealBufs recycles the buffers chunks are sealed into: a backup seals one per
	// chunk, and fresh 4 MiB buffers cost more in page faults than zstd does.
	sealBufs sync.Pool
}

// InitOptions are the parameters of a new repository. The format has no defaults:
// its callers choose (jobs.DefaultChunkSize, jobs.DefaultCompression).
type InitOptions struct {
	// Key, when not empty, makes the repository encrypted with this key material.
	Key []byte
	// ChunkSize is the default chunk size of the repository's backups.
	ChunkSize int64
	// Compression of the repository's backups: "zstd" or "none".
	Compression string
}

// Init creates a repository on store. It fails with sinks.ErrExists if one is there.
func Init(ctx context.Context, store sinks.Store, o InitOptions) (*Repository, error) {
	id := make([]byte, 16)
	rand.Read(id)
	cfg := &Config{
		Version: FormatVersion, ID: hex.EncodeToString(id), Created: time.Now().UTC(),
		ChunkHash: hashBLAKE3, Compression: o.Compression, ChunkSize: o.ChunkSize,
	}
	var keys *dataKeys
	if len(o.Key) > 0 {
		var err error
		if cfg.Encryption, keys, err = newEncryption(o.Key); err != nil {
			return nil, err
		}
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	data, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := store.PutIfAbsent(ctx, configName, data); err != nil {
		return nil, fmt.Errorf("%s: create repository: %w", store.Location(), err)
	}
	return newRepository(store, cfg, keys)
}

// Open opens the repository on store. key is needed when it is encrypted and
// ignored otherwise.
func Open(ctx context.Context, store sinks.Store, key []byte) (*Repository, error) {
	data, err := getObject(ctx, store, configName, nil, MaxSmallObject)
	if errors.Is(err, sinks.ErrNotFound) {
		return nil, fmt.Errorf("%s: %w (no config object)", store.Location(), sinks.ErrNoRepository)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", store.Location(), err)
	}
	cfg, err := parseConfig(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", store.Location(), err)
	}
	var keys *dataKeys
	if cfg.Encryption != nil {
		if keys, err = cfg.Encryption.unwrap(key); err != nil {
			return nil, fmt.Errorf("%s: %w", store.Location(), err)
		}
	}
	return newRepository(store, cfg, keys)
}

// OpenOrInit opens the repository on store, creating it first when there is none.
// A backup uses it, so that the first backup to a new location just works.
func OpenOrInit(ctx context.Context, store sinks.Store, o InitOptions) (*Repository, error) {
	r, err := Open(ctx, store, o.Key)
	if !errors.Is(err, sinks.ErrNoRepository) {
		return r, err
	}
	// A missing bucket also reads as "no repository"; creating the config then
	// fails with the store's own clear error, so that case needs no special care.
	r, err = Init(ctx, store, o)
	if errors.Is(err, sinks.ErrExists) { // another worker created it first
		return Open(ctx, store, o.Key)
	}
	return r, err
}

func newRepository(store sinks.Store, cfg *Config, keys *dataKeys) (*Repository, error) {
	c, err := newCodec(keys)
	if err != nil {
		return nil, err
	}
	return &Repository{store: store, cfg: cfg, codec: c, chunkCache: &chunkCache{}}, nil
}

// Config returns the repository's parameters.
func (r *Repository) Config() Config { return *r.cfg }

// Encrypted reports whether the repository encrypts its content.
func (r *Repository) Encrypted() bool { return r.cfg.Encryption != nil }

// Location names the store, for messages.
func (r *Repository) Location() string { return r.store.Location() }

// PutResult says what PutChunk did.
type PutResult struct {
	ID ChunkID
	// Stored is the size of the object uploaded, 0 when the chunk was already there.
	Stored int
}

// PutChunk stores a chunk unless the repository already has it. Concurrent puts of
// the same content upload it once. compress asks for zstd; a chunk it does not
// shrink is stored as it is. Through a backup attempt's repository
// (BeginAttempt), a chunk that garbage collection has condemned is uploaded again
// even when it is stored, so that its new modification time keeps it.
func (r *Repository) PutChunk(ctx context.Context, data []byte, compress bool) (PutResult, error) {
	id := r.codec.ID(data)
	condemned := r.gc.condemnedChunk(id)
	if !condemned && r.knownSince(id) {
		return PutResult{ID: id}, nil
	}
	key := id.String()
	if condemned {
		key += "+condemned" // never shares the answer of a plain lookup
	}
	// Only the caller whose function runs uploads; the others share its result and
	// count the chunk as deduplicated. (singleflight's shared flag is set for the
	// leader too, so it cannot tell them apart.)
	leader := false
	v, err, _ := r.inflight.Do(key, func() (any, error) {
		leader = true
		return r.putChunk(ctx, id, data, compress, condemned)
	})
	if err != nil {
		return PutResult{ID: id}, fmt.Errorf("store chunk %s: %w", id, err)
	}
	if !leader {
		return PutResult{ID: id}, nil
	}
	if condemned {
		r.gc.reuploaded(id)
	}
	return PutResult{ID: id, Stored: v.(int)}, nil
}

// knownSince reports whether the chunk was seen stored late enough for this
// repository (any time; for an attempt, after it began).
func (r *Repository) knownSince(id ChunkID) bool {
	v, ok := r.known.Load(id)
	return ok && (r.gc == nil || !v.(time.Time).Before(r.gc.started))
}

func (r *Repository) putChunk(ctx context.Context, id ChunkID, data []byte, compress, upload bool) (int, error) {
	asked := time.Now()
	name := chunkName(id)
	if !upload {
		ok, err := r.store.Exists(ctx, name)
		if err != nil {
			return 0, err
		}
		if ok {
			r.known.Store(id, asked)
			return 0, nil
		}
	}
	buf, _ := r.sealBufs.Get().(*[]byte)
	if buf == nil {
		buf = new([]byte)
	}
	obj := r.codec.Seal(*buf, data, chunkAAD(id), compress)
	if err := r.store.Put(ctx, name, obj); err != nil {
		// Not recycled: after a failed request an HTTP transport may still be
		// reading the body.
		return 0, err
	}
	*buf = obj
	r.sealBufs.Put(buf) // a store keeps nothing of data after a successful Put
	if !upload {
		// A condemned chunk is not remembered: until the attempt's commit check,
		// a sweep may still delete it.
		r.known.Store(id, asked)
	}
	return len(obj), nil
}

// GetChunk reads a chunk and checks it against its id. The plaintext goes into
// buf's capacity when it fits (it may be nil).
func (r *Repository) GetChunk(ctx context.Context, id ChunkID, buf []byte) ([]byte, error) {
	enc := getObjectBuffer()
	obj, err := getObject(ctx, r.store, chunkName(id), (*enc)[:0], MaxChunkObject)
	if err != nil {
		objectBuffers.Put(enc)
		return nil, fmt.Errorf("chunk %s: %w", id, err)
	}
	data, err := r.codec.Open(obj, chunkAAD(id), buf)
	if !sharesArray(data, obj) { // else the plaintext is obj's: the caller keeps it
		*enc = obj[:0]
		objectBuffers.Put(enc)
	}
	if err != nil {
		return nil, fmt.Errorf("chunk %s: %w", id, err)
	}
	if r.codec.ID(data) != id {
		return nil, fmt.Errorf("chunk %s: %w: content does not match its id", id, ErrCorrupt)
	}
	return data, nil
}

// objectBuffers recycles the buffers chunk objects are read into (when the store
// can read into one): a fresh chunk-sized buffer per read costs more in page
// faults than the read itself.
var objectBuffers sync.Pool // of *[]byte

func getObjectBuffer() *[]byte {
	if b, ok := objectBuffers.Get().(*[]byte); ok {
		return b
	}
	return new([]byte)
}

// sharesArray reports whether a and b are slices of the same array: slices of
// one array end their capacity at the same element.
func sharesArray(a, b []byte) bool {
	return cap(a) > 0 && cap(b) > 0 && &a[:cap(a)][cap(a)-1] == &b[:cap(b)][cap(b)-1]
}

// PutManifest writes a backup's manifest. It never overwrites one: a second write
// of the same id fails with sinks.ErrExists.
func (r *Repository) PutManifest(ctx context.Context, m *Manifest) error {
	if !ValidID(m.ID) {
		return fmt.Errorf("backup id %q is not valid", m.ID)
	}
	m.Version = ManifestVersion
	if err := m.validate(); err != nil {
		return err
	}
	data, err := m.marshal()
	if err != nil {
		return err
	}
	if err := m.checkHeaderSize(); err != nil {
		return err
	}
	obj := r.codec.Seal(nil, data, manifestAAD(m.ID), true)
	if err := checkObjectSize("manifest "+m.ID, obj, MaxMetadataObject); err != nil {
		return err
	}
	if err := r.gc.beforeCommit(ctx); err != nil {
		return fmt.Errorf("write manifest %s: %w", m.ID, err)
	}
	if err := r.putIndexEntry(ctx, m); err != nil {
		return err
	}
	err = r.store.PutIfAbsent(ctx, manifestName(m.ID), obj)
	if errors.Is(err, sinks.ErrExists) {
		// A conditional put retried after a lost answer finds its own object: the
		// manifest is ours if it says what we wrote.
		if have, gerr := r.Manifest(ctx, m.ID); gerr == nil && have.JobID == m.JobID && slices.Equal(have.Chunks, m.Chunks) &&
			reflect.DeepEqual(have.Patches, m.Patches) {
			return nil
		}
	}
	if err != nil {
		return fmt.Errorf("write manifest %s: %w", m.ID, err)
	}
	return nil
}

// Manifest reads a backup's manifest.
func (r *Repository) Manifest(ctx context.Context, id string) (*Manifest, error) {
	if !ValidID(id) {
		return nil, fmt.Errorf("backup id %q is not valid", id)
	}
	obj, err := getObject(ctx, r.store, manifestName(id), nil, MaxMetadataObject)
	if errors.Is(err, sinks.ErrNotFound) {
		return nil, fmt.Errorf("backup %s in %s: %w", id, r.Location(), ErrBackupNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("backup %s: %w", id, err)
	}
	m, err := r.codec.decodeManifest(obj, manifestAAD(id))
	if err != nil {
		return nil, fmt.Errorf("backup %s: manifest: %w", id, err)
	}
	if m.ID != id {
		return nil, fmt.Errorf("backup %s: %w: manifest names %q", id, ErrCorrupt, m.ID)
	}
	if err := m.validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	return m, nil
}
