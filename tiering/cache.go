package tiering

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// ErrShort means a ranged read returned fewer (or more) bytes than the
// object's size says the range holds: the object is not the one the
// caller knows.
var ErrShort = errors.New("tiering: object shorter than expected")

// CacheConfig configures a Cache. Start from DefaultCacheConfig.
type CacheConfig struct {
	// BlockBytes is the size of one ranged GET and of one cache entry, in
	// bytes. Default 4 MiB (on loopback versitygw, 1 MiB GETs replayed at
	// about a third of local speed, 4 MiB ones at about 60%:
	// docs/benchmarks.md); at least 4 KiB.
	BlockBytes int64
	// CapBytes caps the cached blocks, in bytes (memory). Default 64 MiB;
	// at least two blocks.
	CapBytes int64
	// GetTimeout bounds one ranged GET. Default 30 s.
	GetTimeout time.Duration
	// Readahead is how many blocks past a sequential read are fetched in
	// the background. Default 4; 0 turns prefetch off.
	Readahead int
	// OnGet, if set, is called after every GET the cache issues with its
	// duration, the bytes it returned and its error (metrics).
	OnGet func(d time.Duration, bytes int64, err error)
}

// DefaultCacheConfig returns the production defaults.
func DefaultCacheConfig() CacheConfig {
	return CacheConfig{BlockBytes: 4 << 20, CapBytes: 64 << 20, GetTimeout: 30 * time.Second, Readahead: 4}
}

// Validate reports the first out-of-range field.
func (c CacheConfig) Validate() error {
	switch {
	case c.BlockBytes < 4<<10:
		return fmt.Errorf("tiering: cache block %d bytes, want at least 4096", c.BlockBytes)
	case c.CapBytes < 2*c.BlockBytes:
		return fmt.Errorf("tiering: cache cap %d bytes, want at least two blocks (%d bytes)", c.CapBytes, 2*c.BlockBytes)
	case c.GetTimeout <= 0:
		return fmt.Errorf("tiering: cache GET timeout %v, want positive", c.GetTimeout)
	case c.Readahead < 0 || int64(c.Readahead+1)*c.BlockBytes > c.CapBytes:
		return fmt.Errorf("tiering: cache readahead %d blocks, want 0 to %d (the cap holds %d blocks)", c.Readahead, c.CapBytes/c.BlockBytes-1, c.CapBytes/c.BlockBytes)
	}
	return nil
}

// CacheStats counts what a Cache did since it was made.
type CacheStats struct {
	Hits, Misses   int64 // block lookups served from memory / fetched (or joined a fetch)
	FetchedBytes   int64 // bytes returned by GETs
	Prefetches     int64 // GETs started ahead of a sequential reader
	CachedBytes    int64 // bytes held now
	CachedBlocks   int64 // blocks held now
	EvictedBlocks  int64 // blocks dropped to stay under the cap
	CoalescedReads int64 // lookups that waited for another's GET of the block
}

// Cache reads objects of a Target in fixed blocks (ranged GETs) through
// an in-memory LRU capped in bytes. Concurrent reads of one block share
// one GET; a read that continues where the previous read of the object
// ended starts GETs of the next Readahead blocks in the background
// (sequential prefetch). Objects are written once (keys are unique per upload), so a
// cached block never goes stale. Errors are not cached. Safe for
// concurrent use; Close stops prefetches.
type Cache struct {
	t   Target
	cfg CacheConfig
	// ctx bounds every GET (prefetches included); Close cancels it.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu struct {
		sync.Mutex
		blocks   map[blockID]*list.Element // of *block
		lru      *list.List                // front: most recently used
		used     int64
		inflight map[blockID]*fetch
		next     map[string]int64 // per key: the block after the last one read
		closed   bool
	}
	hits, misses, fetched, prefetches, evicted, coalesced atomic.Int64
}

type blockID struct {
	key string
	idx int64
}

type block struct {
	id   blockID
	data []byte
}

type fetch struct {
	done chan struct{}
	data []byte
	err  error
}

// NewCache returns a cache of t's objects.
func NewCache(t Target, cfg CacheConfig) (*Cache, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c := &Cache{t: t, cfg: cfg}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.mu.blocks = map[blockID]*list.Element{}
	c.mu.lru = list.New()
	c.mu.inflight = map[blockID]*fetch{}
	c.mu.next = map[string]int64{}
	return c, nil
}

// Close cancels GETs in flight and waits for prefetches to end. Reads
// after Close fail.
func (c *Cache) Close() error {
	c.mu.Lock()
	c.mu.closed = true
	c.mu.Unlock()
	c.cancel()
	c.wg.Wait()
	return nil
}

// Stats returns the counters.
func (c *Cache) Stats() CacheStats {
	c.mu.Lock()
	used, n := c.mu.used, int64(c.mu.lru.Len())
	c.mu.Unlock()
	return CacheStats{Hits: c.hits.Load(), Misses: c.misses.Load(), FetchedBytes: c.fetched.Load(),
		Prefetches: c.prefetches.Load(), CachedBytes: used, CachedBlocks: n, EvictedBlocks: c.evicted.Load(),
		CoalescedReads: c.coalesced.Load()}
}

// ReadAt reads len(p) bytes at off of the object key, which is size
// bytes long, as io.ReaderAt does: fewer only at the object's end (then
// io.EOF). A missing object is ErrNotFound, a GET that returns fewer or
// more bytes than the range holds ErrShort; other errors are the
// target's.
func (c *Cache) ReadAt(ctx context.Context, key string, size int64, p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("tiering: read %s at negative offset %d", key, off)
	}
	if off >= size {
		return 0, io.EOF
	}
	end := min(off+int64(len(p)), size)
	first, last := off/c.cfg.BlockBytes, (end-1)/c.cfg.BlockBytes
	c.mu.Lock()
	sequential := c.mu.next[key] == first || c.mu.next[key] == first+1
	c.mu.next[key] = last + 1
	c.mu.Unlock()
	for ahead := last + 1; sequential && ahead <= last+int64(c.cfg.Readahead) && ahead*c.cfg.BlockBytes < size; ahead++ {
		c.prefetch(key, size, ahead)
	}
	n := 0
	for idx := first; idx <= last; idx++ {
		data, err := c.block(ctx, key, size, idx)
		if err != nil {
			return n, err
		}
		bstart := idx * c.cfg.BlockBytes
		lo := max(off, bstart) - bstart
		hi := min(end, bstart+int64(len(data))) - bstart
		n += copy(p[n:], data[lo:hi])
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// Prefetch starts a GET of the block holding off of the object key (size
// bytes) in the background, unless it is cached or in flight: a caller
// that knows what will be read next (the next segment of a replay). It
// does not block.
func (c *Cache) Prefetch(key string, size, off int64) {
	if off < 0 || off >= size {
		return
	}
	c.prefetch(key, size, off/c.cfg.BlockBytes)
}

// blockLen is the length of block idx of an object of size bytes.
func (c *Cache) blockLen(size, idx int64) int64 {
	return min(c.cfg.BlockBytes, size-idx*c.cfg.BlockBytes)
}

// block returns block idx of key: cached, joined to a GET in flight, or
// fetched now.
func (c *Cache) block(ctx context.Context, key string, size, idx int64) ([]byte, error) {
	id := blockID{key, idx}
	c.mu.Lock()
	if c.mu.closed {
		c.mu.Unlock()
		return nil, fmt.Errorf("tiering: cache closed: %w", context.Canceled)
	}
	if e, ok := c.mu.blocks[id]; ok {
		c.mu.lru.MoveToFront(e)
		c.mu.Unlock()
		c.hits.Add(1)
		return e.Value.(*block).data, nil
	}
	c.misses.Add(1)
	f, ok := c.mu.inflight[id]
	if !ok {
		f = c.startLocked(id, size)
		c.mu.Unlock()
		c.run(id, size, f)
	} else {
		c.mu.Unlock()
		c.coalesced.Add(1)
	}
	select {
	case <-f.done:
		return f.data, f.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// prefetch starts a GET of block idx in the background, unless it is
// cached or in flight.
func (c *Cache) prefetch(key string, size, idx int64) {
	id := blockID{key, idx}
	c.mu.Lock()
	_, cached := c.mu.blocks[id]
	_, busy := c.mu.inflight[id]
	if cached || busy || c.mu.closed {
		c.mu.Unlock()
		return
	}
	f := c.startLocked(id, size)
	c.wg.Add(1)
	c.mu.Unlock()
	c.prefetches.Add(1)
	go func() {
		defer c.wg.Done()
		c.run(id, size, f)
	}()
}

func (c *Cache) startLocked(id blockID, size int64) *fetch {
	f := &fetch{done: make(chan struct{})}
	c.mu.inflight[id] = f
	return f
}

// run does the GET of f's block, publishes it to the waiters and, on
// success, caches it.
func (c *Cache) run(id blockID, size int64, f *fetch) {
	f.data, f.err = c.get(id, c.blockLen(size, id.idx))
	c.mu.Lock()
	delete(c.mu.inflight, id)
	if f.err == nil && !c.mu.closed {
		c.mu.blocks[id] = c.mu.lru.PushFront(&block{id: id, data: f.data})
		c.mu.used += int64(len(f.data))
		for c.mu.used > c.cfg.CapBytes {
			e := c.mu.lru.Back()
			b := e.Value.(*block)
			c.mu.lru.Remove(e)
			delete(c.mu.blocks, b.id)
			c.mu.used -= int64(len(b.data))
			c.evicted.Add(1)
		}
	}
	c.mu.Unlock()
	close(f.done)
}

// get reads exactly n bytes of block id.
func (c *Cache) get(id blockID, n int64) ([]byte, error) {
	ctx, cancel := context.WithTimeout(c.ctx, c.cfg.GetTimeout)
	defer cancel()
	start := time.Now()
	data, err := c.getRange(ctx, id.key, id.idx*c.cfg.BlockBytes, n)
	if c.cfg.OnGet != nil {
		c.cfg.OnGet(time.Since(start), int64(len(data)), err)
	}
	if err != nil {
		return nil, err
	}
	c.fetched.Add(int64(len(data)))
	return data, nil
}

func (c *Cache) getRange(ctx context.Context, key string, off, n int64) ([]byte, error) {
	rc, err := c.t.GetRange(ctx, key, off, n)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	data := make([]byte, n+1)
	m, err := io.ReadFull(rc, data)
	switch {
	case err == nil:
		return nil, fmt.Errorf("%w: %s: more than %d bytes at %d", ErrShort, key, n, off)
	case errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF):
		if int64(m) != n {
			return nil, fmt.Errorf("%w: %s: %d of %d bytes at %d", ErrShort, key, m, n, off)
		}
		return data[:n], nil
	default:
		return nil, fmt.Errorf("tiering: get %s at %d: %w", key, off, err)
	}
}
