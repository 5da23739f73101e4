package jobs

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"

	"golang.org/x/sync/semaphore"
	"golang.org/x/sync/singleflight"

	"github.com/blockferry/blockferry/sinks/repository"
)

// DefaultDeviceCache is the decoded positions a BackupDevice keeps by default:
// 16 positions of 4 MiB, room for two sequential readers with their read-ahead.
// A larger cache costs while it fills: every position then takes fresh memory,
// whose page faults made a 256 MiB cache's sequential copy take twice the CPU
// time of a restore; once full, evicted positions' buffers are reused.
const DefaultDeviceCache = 64 << 20

// BackupDevice is a backup as a read-only block device: reads fetch only the
// chunk positions they touch, each checked against its id exactly as a restore
// checks it, through a bounded LRU cache of decoded positions. A corrupt or
// missing chunk fails the reads that touch its position, never returns wrong
// data, and is never cached. It is safe for concurrent use.
//
// Its memory is bounded by the cache, plus twice the fetch concurrency in chunk
// buffers (fetches in flight and recycled buffers), plus the encoded chunks being
// fetched, plus the patch chunks a restore keeps too (repository.PatchCacheSize):
// with the defaults and 4 MiB chunks, 64 + 64 + 32 + 4 MiB. Positions evicted
// while a read still copies from them live until that copy ends.
type BackupDevice struct {
	m         *repository.Manifest
	positions *repository.PositionReader
	fetches   *semaphore.Weighted
	readAhead int
	cache     *positionCache
	flight    singleflight.Group
	ahead     pendingSet
}

type deviceConfig struct {
	cacheBytes  int64
	concurrency int
	readAhead   int
}

// DeviceOption configures a BackupDevice.
type DeviceOption func(*deviceConfig)

// WithDeviceCache bounds the decoded positions kept between reads (default
// DefaultDeviceCache; at least one position is always kept while it is read).
func WithDeviceCache(bytes int64) DeviceOption { return func(c *deviceConfig) { c.cacheBytes = bytes } }

// WithDeviceConcurrency bounds the positions fetched at once (default 8, as a
// restore's chunks in flight).
func WithDeviceConcurrency(n int) DeviceOption {
	return func(c *deviceConfig) { c.concurrency = max(n, 1) }
}

// WithDeviceReadAhead sets how many positions past a sequential read are fetched
// ahead of it (default 8, at most half the cache; 0: none). Read-ahead only takes
// idle fetch slots.
func WithDeviceReadAhead(n int) DeviceOption {
	return func(c *deviceConfig) { c.readAhead = max(n, 0) }
}

// NewBackupDevice returns backup m of repo as a device.
func NewBackupDevice(repo *repository.Repository, m *repository.Manifest, opts ...DeviceOption) *BackupDevice {
	cfg := deviceConfig{cacheBytes: DefaultDeviceCache, concurrency: 8, readAhead: 8}
	for _, o := range opts {
		o(&cfg)
	}
	return &BackupDevice{
		m:         m,
		positions: repo.PositionReader(m, repository.PatchCacheSize),
		fetches:   semaphore.NewWeighted(int64(cfg.concurrency)),
		// Read-ahead beyond half the cache would evict the positions being read.
		readAhead: int(min(int64(cfg.readAhead), cfg.cacheBytes/m.ChunkSize/2)),
		cache:     newPositionCache(cfg.cacheBytes, cfg.concurrency),
	}
}

// Size is the size of the backed-up disk.
func (d *BackupDevice) Size() int64 { return d.m.Size }

// ReadAt fills p with the disk's bytes at off.
func (d *BackupDevice) ReadAt(ctx context.Context, p []byte, off int64) error {
	slices, release, err := d.Lend(ctx, off, int64(len(p)))
	if err != nil {
		return err
	}
	defer release()
	for _, s := range slices {
		p = p[copy(p, s):]
	}
	return nil
}

// LendUnit is the chunk size: a lend holds every chunk position it touches.
func (d *BackupDevice) LendUnit() int64 { return d.m.ChunkSize }

// zeroes is lent for the positions that read as zeroes; nobody writes to it.
var zeroes = make([]byte, 1<<20)

// Lend returns the n bytes of the disk at off without copying them: slices of
// cached positions (and of a shared block of zeroes) that stay valid, and are
// not written to, until release is called.
func (d *BackupDevice) Lend(ctx context.Context, off, n int64) (slices [][]byte, release func(), err error) {
	if off < 0 || n < 0 || off > d.m.Size || n > d.m.Size-off {
		return nil, nil, fmt.Errorf("read of %d bytes at %d: beyond the disk's %d bytes", n, off, d.m.Size)
	}
	var held []*cachedPosition
	var finished []bool // held[k] was read to its end
	release = func() {
		for k, e := range held {
			d.cache.release(e, finished[k])
		}
	}
	cs := d.m.ChunkSize
	for n > 0 {
		i := int(off / cs)
		within := off - int64(i)*cs
		k := min(n, d.m.ChunkLen(i)-within)
		if d.m.ReadsAsZero(i) {
			for z := k; z > 0; z -= int64(len(zeroes)) {
				slices = append(slices, zeroes[:min(z, int64(len(zeroes)))])
			}
		} else {
			e, err := d.position(ctx, i)
			if err != nil {
				release()
				return nil, nil, fmt.Errorf("position %d (disk offset %d): %w", i, int64(i)*cs, err)
			}
			held = append(held, e)
			finished = append(finished, within+k == d.m.ChunkLen(i))
			slices = append(slices, e.data[within:within+k])
		}
		off, n = off+k, n-k
	}
	return slices, release, nil
}

// position returns the content of position i from the cache, or fetches it; the
// caller releases the entry when it has copied from it.
func (d *BackupDevice) position(ctx context.Context, i int) (*cachedPosition, error) {
	e := d.cache.acquire(i)
	// A read that follows the one before it keeps the positions after it coming,
	// hit or miss, so that a sequential reader never waits for a fetch it could
	// have foreseen.
	if sequential, streams := d.cache.follows(i); sequential && d.readAhead > 0 {
		d.readAheadFrom(ctx, i+1, max(1, d.readAhead/streams))
	}
	for e == nil {
		_, err, _ := d.flight.Do(strconv.Itoa(i), func() (any, error) { return nil, d.fetch(ctx, i, true) })
		// A fetch this reader joined may have been cancelled with another
		// client's request; then this one fetches for itself.
		if err != nil && (ctx.Err() != nil || !errors.Is(err, context.Canceled)) {
			return nil, err
		}
		// The entry may be evicted before this reader gets it when the cache is
		// smaller than the positions being read at once; fetching again is rare.
		e = d.cache.acquire(i)
	}
	return e, nil
}

// fetch reads position i into the cache. wait says whether to wait for a fetch
// slot; read-ahead does not, so that it never delays a client's reads.
func (d *BackupDevice) fetch(ctx context.Context, i int, wait bool) error {
	if !wait {
		if !d.fetches.TryAcquire(1) {
			return nil
		}
	} else if err := d.fetches.Acquire(ctx, 1); err != nil {
		return err
	}
	defer d.fetches.Release(1)
	if d.cache.contains(i) {
		return nil
	}
	buf := d.cache.buffers()
	data, _, err := d.positions.Read(ctx, i, buf)
	if err != nil {
		d.cache.giveBack(buf)
		return err
	}
	d.cache.add(i, buf, data, !wait)
	return nil
}

// readAheadFrom fetches the n positions from i on that are neither cached nor
// already coming, in the background. The fetches outlive the request that
// started them, not the client's context.
//
// Sequential readers at once (nbdcopy reads four regions over four connections)
// share the read-ahead: each reads ahead its share of readAhead, and the
// positions read ahead that no reader has read yet, cached or coming, are never
// more than readAhead in all. The cache holds twice that, so read-ahead evicts
// no position before it is read while there are no more readers than
// positions read ahead.
func (d *BackupDevice) readAheadFrom(ctx context.Context, i, n int) {
	ctx = context.WithoutCancel(ctx)
	for j := i; j < i+n && j < len(d.m.Chunks); j++ {
		readLately, cached, unread := d.cache.aheadState(j)
		if readLately {
			break // another reader was here: what follows is its
		}
		if d.m.ReadsAsZero(j) || cached || !d.ahead.start(j, d.readAhead-unread) {
			continue
		}
		go func() {
			defer d.ahead.done(j)
			_, _, _ = d.flight.Do(strconv.Itoa(j), func() (any, error) { return nil, d.fetch(ctx, j, false) })
		}()
	}
}

// pendingSet is the positions being read ahead.
type pendingSet struct {
	mu sync.Mutex
	m  map[int]bool
}

// start marks i pending unless it was already, or limit positions are.
func (p *pendingSet) start(i, limit int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.m[i] || len(p.m) >= limit {
		return false
	}
	if p.m == nil {
		p.m = map[int]bool{}
	}
	p.m[i] = true
	return true
}

func (p *pendingSet) done(i int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.m, i)
}

// Extents describes the disk from off on for up to length bytes, in at most
// limit extents (at least 1): positions that read as zeroes by construction (no
// chunk, or only zero patches) are holes, everything else is data, as the
// manifest says without reading any chunk.
func (d *BackupDevice) Extents(_ context.Context, off, length int64, limit int) ([]Extent, error) {
	if off < 0 || off >= d.m.Size {
		return nil, fmt.Errorf("extents at %d: beyond the disk's %d bytes", off, d.m.Size)
	}
	end := min(d.m.Size, off+length)
	var out []Extent
	for at := off; at < end; {
		i := int(at / d.m.ChunkSize)
		next := min(int64(i)*d.m.ChunkSize+d.m.ChunkLen(i), end)
		zero := d.m.ReadsAsZero(i)
		if n := len(out); n > 0 && out[n-1].Zero == zero {
			out[n-1].Length += next - at
		} else if n < max(limit, 1) {
			out = append(out, Extent{Length: next - at, Zero: zero})
		} else {
			break
		}
		at = next
	}
	return out, nil
}

// Extent is a run of a device that reads as zeroes by construction or holds data.
type Extent struct {
	Length int64
	Zero   bool
}

// positionCache keeps decoded positions, least recently used evicted first, up
// to max bytes; a position read to its end is evicted before any other, as a
// sequential reader will not come back to it. Entries are shared by the readers
// copying from them; an evicted entry's buffers are recycled once its last
// reader is done, since fresh chunk-sized buffers cost more in page faults than
// decompression.
type positionCache struct {
	max     int64
	maxFree int // recycled buffers kept: one per fetch slot

	mu      sync.Mutex
	entries map[int]*list.Element // of *cachedPosition
	lru     list.List             // front: most recently used
	size    int64
	free    []*repository.PositionBuffers
	unread  int // entries read ahead that no reader has acquired yet
	ends    recentEnds
}

// recentEnds remembers the positions lately read to their end: to tell a
// sequential reader's next read, to count the sequential readers, and to stop
// one reader's read-ahead where another reader has been (nbdcopy's readers each
// take a region, and the next region was read long before its end is reached).
type recentEnds struct {
	ring [recentEndsKept]int // index+1; 0: empty
	at   int                 // next slot of ring
	set  map[int]int         // index: times in ring
}

// recentEndsKept is the positions remembered: 1 GiB of 4 MiB positions, more
// than nbdcopy's readers are apart (a 128 MiB region each).
const recentEndsKept = 256

// recentEndsStreams is how many of the latest ends count the sequential
// readers: one per reader nbdcopy runs, and some.
const recentEndsStreams = 16

func (r *recentEnds) add(i int) {
	if old := r.ring[r.at]; old != 0 {
		if r.set[old-1]--; r.set[old-1] == 0 {
			delete(r.set, old-1)
		}
	}
	if r.set == nil {
		r.set = map[int]int{}
	}
	r.ring[r.at] = i + 1
	r.set[i]++
	r.at = (r.at + 1) % recentEndsKept
}

func (r *recentEnds) has(i int) bool { return r.set[i] > 0 }

// streams counts the sequential readers among the latest ends: the positions
// read to their end whose successor was not.
func (r *recentEnds) streams() int {
	n := 0
	for k := 1; k <= recentEndsStreams; k++ {
		if end := r.ring[(r.at-k+recentEndsKept)%recentEndsKept]; end != 0 && !r.has(end) {
			n++
		}
	}
	return max(n, 1)
}

type cachedPosition struct {
	index    int
	buf      *repository.PositionBuffers
	data     []byte // aliases buf; never written while cached
	readers  int
	evicted  bool
	finished bool // read to its end
	unread   bool // read ahead, not acquired yet
}

func newPositionCache(maxBytes int64, maxFree int) *positionCache {
	return &positionCache{max: maxBytes, maxFree: maxFree, entries: map[int]*list.Element{}}
}

// acquire returns position i with a reader counted on it, or nil.
func (c *positionCache) acquire(i int) *cachedPosition {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.entries[i]
	if !ok {
		return nil
	}
	c.lru.MoveToFront(el)
	e := el.Value.(*cachedPosition)
	e.readers++
	if e.unread {
		e.unread = false
		c.unread--
	}
	return e
}

// release ends a read of e; finished says it read e to its end, which makes e
// the first to evict.
func (c *positionCache) release(e *cachedPosition, finished bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if finished {
		c.ends.add(e.index)
		e.finished = true
		if el, ok := c.entries[e.index]; ok && !e.evicted {
			c.lru.MoveToBack(el)
		}
	}
	if e.readers--; e.readers == 0 && e.evicted {
		c.recycle(e)
	}
}

// follows reports whether a read of position i continues a sequential reader
// (position 0, or one whose predecessor was lately read to its end), and how
// many sequential readers there are lately: the ends of runs of positions read
// to their end.
func (c *positionCache) follows(i int) (sequential bool, streams int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return i == 0 || c.ends.has(i-1), c.ends.streams()
}

// aheadState is what read-ahead asks of position i, under one lock: whether it
// was lately read to its end, whether it is cached, and how many positions
// read ahead no reader has acquired yet.
func (c *positionCache) aheadState(i int) (readLately, cached bool, unread int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, cached = c.entries[i]
	return c.ends.has(i), cached, c.unread
}

func (c *positionCache) contains(i int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.entries[i]
	return ok
}

// buffers returns recycled buffers for a fetch, or new ones.
// A position read to its end is worth less than the page faults of fresh
// buffers: its buffers are taken before the cache grows, so that sequential
// readers cycle through a few positions' buffers rather than filling the cache.
func (c *positionCache) buffers() *repository.PositionBuffers {
	c.mu.Lock()
	defer c.mu.Unlock()
	if back := c.lru.Back(); len(c.free) == 0 && back != nil {
		if e := back.Value.(*cachedPosition); e.finished && e.readers == 0 {
			c.evict(back)
		}
	}
	if n := len(c.free); n > 0 {
		b := c.free[n-1]
		c.free = c.free[:n-1]
		return b
	}
	return &repository.PositionBuffers{}
}

// add caches position i, evicting the least recently used positions beyond max
// (but never the one just added); ahead says it was read ahead of any reader.
func (c *positionCache) add(i int, buf *repository.PositionBuffers, data []byte, ahead bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.entries[i]; ok {
		c.recycle(&cachedPosition{buf: buf})
		return
	}
	c.entries[i] = c.lru.PushFront(&cachedPosition{index: i, buf: buf, data: data, unread: ahead})
	if ahead {
		c.unread++
	}
	c.size += int64(len(data))
	for c.size > c.max && c.lru.Len() > 1 {
		c.evict(c.lru.Back())
	}
}

// evict drops an entry from the cache; its buffers are recycled now, or when
// its last reader is done.
func (c *positionCache) evict(el *list.Element) {
	e := c.lru.Remove(el).(*cachedPosition)
	delete(c.entries, e.index)
	c.size -= int64(len(e.data))
	e.evicted = true
	if e.unread {
		e.unread = false
		c.unread--
	}
	if e.readers == 0 {
		c.recycle(e)
	}
}

// giveBack recycles the buffers of a fetch that failed.
func (c *positionCache) giveBack(buf *repository.PositionBuffers) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.recycle(&cachedPosition{buf: buf})
}

// recycle keeps an evicted entry's buffers for the next fetch.
func (c *positionCache) recycle(e *cachedPosition) {
	if len(c.free) < c.maxFree {
		c.free = append(c.free, e.buf)
	}
	e.buf, e.data = nil, nil
}
