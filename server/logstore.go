package server

import (
	"fmt"
	"log/slog"
	"math"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	wal "github.com/hashicorp/raft-wal"
	walfs "github.com/hashicorp/raft-wal/fs"
	walsegment "github.com/hashicorp/raft-wal/segment"
	"github.com/hashicorp/raft-wal/types"
)

// logStore is the node's Raft log: github.com/hashicorp/raft-wal under
// raft/wal (one write and one fsync per StoreLogs), with two things on top
// that raft-wal does not keep:
//
//   - a cache of the most recent entries, bounded in bytes (raft's own
//     LogCache is bounded in entries, and an entry of group commit can be
//     megabytes: 1,024 of them held gigabytes);
//   - the size of every entry in the log, so that snapshots and the
//     entries kept after one are bounded in bytes (logbound.go).
//
// Entry sizes cost 4 bytes an entry; the log holds at most a few thousand
// entries between snapshots (SnapshotThreshold + TrailingLogs), so this is
// kilobytes. They are rebuilt at open by reading the log once; the log is
// bounded in bytes, so that read is too.
type logStore struct {
	wal           *wal.WAL
	maxCacheBytes int64
	// werr is the error of the last StoreLogs, nil once one succeeds
	// (health: a node that cannot persist is not serving).
	werr atomic.Pointer[error]
	// onStore, if set before raft starts, is told how long each
	// successful StoreLogs took (one write and one fsync).
	onStore func(time.Duration)

	mu struct {
		sync.RWMutex
		// cache holds entries [cacheFirst, cacheFirst+len(cache)),
		// contiguous, the newest last; cacheBytes is their entrySize sum.
		cache      []*raft.Log
		cacheFirst uint64
		cacheBytes int64
		// sizes[i] is the entrySize of entry sizesFirst+i; every entry of
		// the log is there. logBytes is their sum.
		sizes      []uint32
		sizesFirst uint64
		logBytes   int64
	}
}

var (
	_ raft.LogStore          = (*logStore)(nil)
	_ raft.MonotonicLogStore = (*logStore)(nil)
)

// walSegmentBytes is the size of raft-wal's segment files (its default is
// 64 MiB). Files are preallocated, and deleted only when every entry in
// them is below a snapshot's trailing cut, so smaller files keep less of a
// log that is bounded to a few tens of MiB on disk; a segment rolls after
// 16 MiB, a cheap step (create, preallocate, seal with an index frame).
const walSegmentBytes = 16 << 20

// entrySize is what an entry counts for in the byte bounds: its payload
// plus a fixed allowance for raft-wal's frame and the struct.
func entrySize(l *raft.Log) int64 {
	return int64(len(l.Data)+len(l.Extensions)) + 48
}

// openLogStore opens (or creates) the raft-wal log in dir and reads it
// once to learn every entry's size, keeping the newest in the cache.
func openLogStore(dir string, cacheBytes int64, vfs types.VFS, nodeID string, logger *slog.Logger) (*logStore, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, err
	}
	if _, _, err := checkWALFiles(dir); err != nil {
		return nil, fmt.Errorf("%w; this node must not start on it: move its data directory away and let it rejoin from its peers", err)
	}
	if vfs == nil {
		vfs = walfs.New()
	}
	w, err := wal.Open(dir, wal.WithLogger(raftLogger(logger, "raft-wal", hclog.Info)), wal.WithSegmentSize(walSegmentBytes),
		wal.WithSegmentFiler(walsegment.NewFiler(dir, vfs)))
	if err != nil {
		return nil, fmt.Errorf("opening raft log %s: %w", dir, err)
	}
	s := &logStore{wal: w, maxCacheBytes: cacheBytes}
	if err := s.load(logger); err != nil {
		w.Close()
		return nil, fmt.Errorf("reading raft log %s: %w", dir, err)
	}
	return s, nil
}

func (s *logStore) load(logger *slog.Logger) error {
	first, err := s.wal.FirstIndex()
	if err != nil {
		return err
	}
	last, err := s.wal.LastIndex()
	if err != nil || last == 0 {
		return err
	}
	logger.Info("reading raft log", "first_index", first, "last_index", last)
	s.mu.sizesFirst = first
	for i := first; i <= last; i++ {
		l := new(raft.Log)
		if err := s.wal.GetLog(i, l); err != nil {
			return fmt.Errorf("entry %d: %w", i, err)
		}
		s.addLocked(l)
	}
	logger.Info("raft log read", "entries", last-first+1, "bytes", s.mu.logBytes, "cached_bytes", s.mu.cacheBytes)
	return nil
}

// addLocked records a stored entry: its size, and the entry in the cache,
// evicting the oldest cached entries past the byte bound.
func (s *logStore) addLocked(l *raft.Log) {
	sz := entrySize(l)
	if n := uint64(len(s.mu.sizes)); n == 0 || l.Index != s.mu.sizesFirst+n {
		// A gap (the first entry after a snapshot install): start over.
		s.mu.sizes, s.mu.sizesFirst, s.mu.logBytes = s.mu.sizes[:0], l.Index, 0
	}
	s.mu.sizes = append(s.mu.sizes, uint32(min(sz, 1<<32-1)))
	s.mu.logBytes += sz
	if n := uint64(len(s.mu.cache)); n == 0 || l.Index != s.mu.cacheFirst+n {
		s.dropCacheLocked()
		s.mu.cacheFirst = l.Index
	}
	s.mu.cache = append(s.mu.cache, l)
	s.mu.cacheBytes += sz
	for s.mu.cacheBytes > s.maxCacheBytes && len(s.mu.cache) > 0 {
		s.mu.cacheBytes -= entrySize(s.mu.cache[0])
		s.mu.cache[0] = nil // the backing array must not keep it alive
		s.mu.cache = s.mu.cache[1:]
		s.mu.cacheFirst++
	}
}

func (s *logStore) dropCacheLocked() {
	clear(s.mu.cache)
	s.mu.cache, s.mu.cacheBytes = s.mu.cache[:0], 0
}

// FirstIndex implements raft.LogStore.
func (s *logStore) FirstIndex() (uint64, error) { return s.wal.FirstIndex() }

// LastIndex implements raft.LogStore.
func (s *logStore) LastIndex() (uint64, error) { return s.wal.LastIndex() }

// IsMonotonic tells raft that the store refuses gaps, so it empties the
// log after installing a snapshot instead of leaving a gap.
func (s *logStore) IsMonotonic() bool { return s.wal.IsMonotonic() }

// GetLog implements raft.LogStore: from the cache if it holds idx. An
// index below FirstIndex is not found, as raft expects after it compacted
// the log: raft-wal v0.4.2 still returns such entries while they are in
// its tail segment (its head truncation moves the segment's MinIndex, not
// the tail writer's), which would make the leader send a far-behind
// follower old entries instead of the snapshot.
func (s *logStore) GetLog(idx uint64, l *raft.Log) error {
	s.mu.RLock()
	if idx >= s.mu.cacheFirst && idx-s.mu.cacheFirst < uint64(len(s.mu.cache)) {
		*l = *s.mu.cache[idx-s.mu.cacheFirst]
		s.mu.RUnlock()
		return nil
	}
	s.mu.RUnlock()
	if first, err := s.wal.FirstIndex(); err == nil && idx < first {
		return raft.ErrLogNotFound
	}
	return s.wal.GetLog(idx, l)
}

// StoreLog implements raft.LogStore.
func (s *logStore) StoreLog(l *raft.Log) error { return s.StoreLogs([]*raft.Log{l}) }

// StoreLogs implements raft.LogStore: one raft-wal append (one write, one
// fsync), then the entries are recorded.
func (s *logStore) StoreLogs(logs []*raft.Log) error {
	start := time.Now()
	if err := s.wal.StoreLogs(logs); err != nil {
		s.werr.Store(&err)
		return err
	}
	if s.onStore != nil {
		s.onStore(time.Since(start))
	}
	s.werr.Store(nil)
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range logs {
		s.addLocked(l)
	}
	return nil
}

// DeleteRange implements raft.LogStore. Raft deletes a prefix (after a
// snapshot), a suffix (a follower's conflicting tail) or everything
// (after installing a snapshot).
func (s *logStore) DeleteRange(lo, hi uint64) error {
	err := s.wal.DeleteRange(lo, hi)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.trimSizesLocked(lo, hi)
	s.trimCacheLocked(lo, hi)
	return err
}

func (s *logStore) trimSizesLocked(lo, hi uint64) {
	first, n := s.mu.sizesFirst, uint64(len(s.mu.sizes))
	end := first + n // exclusive
	switch {
	case n == 0 || hi < first || lo >= end:
	case lo <= first && hi >= end-1:
		s.mu.sizes, s.mu.logBytes = s.mu.sizes[:0], 0
	case lo <= first:
		k := hi - first + 1
		for _, sz := range s.mu.sizes[:k] {
			s.mu.logBytes -= int64(sz)
		}
		s.mu.sizes = append(s.mu.sizes[:0], s.mu.sizes[k:]...)
		s.mu.sizesFirst = hi + 1
	case hi >= end-1:
		k := lo - first
		for _, sz := range s.mu.sizes[k:] {
			s.mu.logBytes -= int64(sz)
		}
		s.mu.sizes = s.mu.sizes[:k]
	default:
		// Raft never deletes from the middle; if it did, the sizes would
		// be wrong, so forget them rather than bound by wrong figures.
		s.mu.sizes, s.mu.logBytes = s.mu.sizes[:0], 0
	}
}

func (s *logStore) trimCacheLocked(lo, hi uint64) {
	first, n := s.mu.cacheFirst, uint64(len(s.mu.cache))
	switch {
	case n == 0 || hi < first || lo >= first+n:
	case lo <= first && hi < first+n-1:
		for s.mu.cacheFirst <= hi {
			s.mu.cacheBytes -= entrySize(s.mu.cache[0])
			s.mu.cache[0] = nil
			s.mu.cache = s.mu.cache[1:]
			s.mu.cacheFirst++
		}
	case lo > first && hi >= first+n-1:
		k := lo - first
		for i := k; i < n; i++ {
			s.mu.cacheBytes -= entrySize(s.mu.cache[i])
			s.mu.cache[i] = nil
		}
		s.mu.cache = s.mu.cache[:k]
	default:
		s.dropCacheLocked()
	}
}

// logUsage is the log's size in entries and bytes and the cache's bytes.
type logUsage struct {
	Entries    uint64
	Bytes      int64
	CacheBytes int64
}

func (s *logStore) usage() logUsage {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return logUsage{Entries: uint64(len(s.mu.sizes)), Bytes: s.mu.logBytes, CacheBytes: s.mu.cacheBytes}
}

// trailingFor is how many of the newest entries fit in maxBytes: at least
// one, so raft always keeps the last entry's term at hand, and no bound
// (MaxUint64) while the whole log fits.
func (s *logStore) trailingFor(maxBytes int64) uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.mu.logBytes <= maxBytes {
		return math.MaxUint64
	}
	var sum int64
	var k uint64
	for i := len(s.mu.sizes) - 1; i >= 0; i-- {
		sum += int64(s.mu.sizes[i])
		if sum > maxBytes {
			break
		}
		k++
	}
	return max(k, 1)
}

// writeError is the error of the last StoreLogs if it failed.
func (s *logStore) writeError() error {
	if p := s.werr.Load(); p != nil {
		return *p
	}
	return nil
}

// Close closes the WAL; a second Close does nothing.
func (s *logStore) Close() error { return s.wal.Close() }
