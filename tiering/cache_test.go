package tiering

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// countingTarget counts GetRange calls and can hold them until released.
type countingTarget struct {
	Target
	gets atomic.Int64
	gate chan struct{} // if not nil, every GetRange waits for it to close
}

func (c *countingTarget) GetRange(ctx context.Context, key string, off, n int64) (io.ReadCloser, error) {
	c.gets.Add(1)
	if c.gate != nil {
		<-c.gate
	}
	return c.Target.GetRange(ctx, key, off, n)
}

const testBlock = 4 << 10

func cacheFixture(t *testing.T, size int) (*countingTarget, string, []byte, string) {
	t.Helper()
	dir := t.TempDir()
	fs, err := NewFSTarget(dir)
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, size)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	const key = "c/segments/obj.log"
	if _, err := fs.Put(context.Background(), key, bytes.NewReader(data), int64(len(data)), Checksum(data)); err != nil {
		t.Fatal(err)
	}
	return &countingTarget{Target: fs}, key, data, dir
}

func newTestCache(t *testing.T, target Target, capBlocks int64) *Cache {
	t.Helper()
	cfg := DefaultCacheConfig()
	cfg.BlockBytes, cfg.CapBytes, cfg.Readahead = testBlock, capBlocks*testBlock, 1
	c, err := NewCache(target, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestCacheReadsAndCap: random reads return the object's bytes; the
// cached bytes never exceed the cap; a second pass over a range that fits
// is served from memory.
func TestCacheReadsAndCap(t *testing.T) {
	target, key, data, _ := cacheFixture(t, 40*testBlock+123)
	c := newTestCache(t, target, 8)
	ctx := context.Background()
	size := int64(len(data))
	r := rand.New(rand.NewPCG(3, 4))
	for range 500 {
		off := r.Int64N(size)
		p := make([]byte, r.IntN(3*testBlock)+1)
		n, err := c.ReadAt(ctx, key, size, p, off)
		want := data[off:min(off+int64(len(p)), size)]
		if n != len(want) || !bytes.Equal(p[:n], want) || (n < len(p)) != errors.Is(err, io.EOF) || (err != nil && !errors.Is(err, io.EOF)) {
			t.Fatalf("ReadAt(%d, %d bytes) = %d, %v", off, len(p), n, err)
		}
		if st := c.Stats(); st.CachedBytes > 8*testBlock {
			t.Fatalf("cache holds %d bytes, cap %d", st.CachedBytes, 8*testBlock)
		}
	}
	st := c.Stats()
	if st.EvictedBlocks == 0 || st.Hits == 0 {
		t.Fatalf("stats %+v: want evictions and hits", st)
	}
	// Two blocks read twice: the second time costs no GET.
	p := make([]byte, 2*testBlock)
	if _, err := c.ReadAt(ctx, key, size, p, 0); err != nil {
		t.Fatal(err)
	}
	before := target.gets.Load()
	if _, err := c.ReadAt(ctx, key, size, p, 0); err != nil {
		t.Fatal(err)
	}
	if got := target.gets.Load() - before; got != 0 {
		t.Fatalf("cached blocks cost %d GETs", got)
	}
}

// TestCacheCoalescesAndPrefetches: concurrent reads of one block (the
// last: nothing to prefetch after it) share one GET; a sequential reader finds the next block fetched ahead.
func TestCacheCoalescesAndPrefetches(t *testing.T) {
	target, key, data, _ := cacheFixture(t, 10*testBlock)
	target.gate = make(chan struct{})
	c := newTestCache(t, target, 4)
	size := int64(len(data))
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			p := make([]byte, 100)
			if _, err := c.ReadAt(context.Background(), key, size, p, 9*testBlock+10); err != nil || !bytes.Equal(p, data[9*testBlock+10:9*testBlock+110]) {
				errs <- err
			}
		})
	}
	for c.Stats().Misses < 8 {
		time.Sleep(time.Millisecond) // the readers reach the cache; nothing to wait on but them
	}
	close(target.gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("a coalesced read: %v", err)
	}
	if got := target.gets.Load(); got != 1 {
		t.Fatalf("8 concurrent reads of one block made %d GETs", got)
	}

	// Sequential reads from block 0: each read starts the next block's GET.
	p := make([]byte, testBlock)
	for i := range int64(4) {
		if _, err := c.ReadAt(context.Background(), key, size, p, i*testBlock); err != nil {
			t.Fatal(err)
		}
	}
	c.Close() // waits for the prefetches
	if st := c.Stats(); st.Prefetches < 3 {
		t.Fatalf("stats %+v: want the sequential reader's blocks prefetched", st)
	}
}

// TestCacheLostObject: a missing object is ErrNotFound, an object shorter
// than its size ErrShort; neither is cached.
func TestCacheLostObject(t *testing.T) {
	target, key, data, dir := cacheFixture(t, 3*testBlock)
	c := newTestCache(t, target, 4)
	ctx := context.Background()
	p := make([]byte, 10)
	if _, err := c.ReadAt(ctx, key, int64(len(data))+5, p, int64(len(data))-5); !errors.Is(err, ErrShort) {
		t.Fatalf("read past the real end: %v, want ErrShort", err)
	}
	if _, err := c.ReadAt(ctx, "c/segments/none.log", 100, p, 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("read of a missing object: %v, want ErrNotFound", err)
	}
	if err := os.Remove(filepath.Join(dir, key)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ReadAt(ctx, key, int64(len(data)), p, 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("read of a deleted object: %v, want ErrNotFound", err)
	}
}

// TestCachePrefetchHint: Prefetch fetches the block in the background;
// the read that follows costs no GET.
func TestCachePrefetchHint(t *testing.T) {
	target, key, data, _ := cacheFixture(t, 3*testBlock)
	c := newTestCache(t, target, 4)
	size := int64(len(data))
	c.Prefetch(key, size, testBlock+5)
	c.Prefetch(key, size, size) // past the end: nothing
	for c.Stats().CachedBlocks == 0 {
		time.Sleep(time.Millisecond) // the background GET; nothing to wait on but the cache
	}
	before := target.gets.Load()
	p := make([]byte, 10)
	if _, err := c.ReadAt(context.Background(), key, size, p, testBlock+5); err != nil || !bytes.Equal(p, data[testBlock+5:testBlock+15]) {
		t.Fatalf("read after prefetch: %v", err)
	}
	if st := c.Stats(); target.gets.Load() != before || st.Prefetches != 1 {
		t.Fatalf("stats %+v, %d GETs after the prefetch: want 1 prefetch and no new GET", st, target.gets.Load()-before)
	}
}
