package segment

import (
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	"github.com/tsstore/tsstore/record"
)

// segment is one .log file, its sparse index and its per-stream index.
type segment struct {
	base uint64 // offset of the first batch; fixed by the file name
	path string
	f    File // kept open while referenced (refs); readers use ReadAt

	// refs counts who uses the segment's open files: the Log, while the
	// segment is in l.mu.segs, and every reader between acquire (under
	// l.mu) and release. A sealed segment is replaced (ReplaceSealed) by a
	// new segment value; the old one's files close when its last reference
	// goes, so a reader that captured it keeps preading the old file.
	refs atomic.Int64
	// damaged is set (to a *CorruptionError) on a sealed segment that Open
	// could not verify with Options.OpenDamaged: its .log is open, its end
	// is the next segment's base, it has no index files, and every read
	// of it returns this error until ReplaceSealed swaps in a good copy.
	damaged error

	// Guarded by Log.mu: written by the writer with the lock held, read by
	// readers with the read lock held. The writer reads them lock-free.
	size    int64  // bytes of complete batches
	next    uint64 // NextOffset of the last batch, base if empty
	firstTS int64  // timestamp of the first batch
	lastTS  int64  // timestamp of the last batch
	// The sparse index: index (in memory, only ever appended to) while the
	// segment is active, ix (in the .index and .timeindex files) once it is
	// sealed. Exactly one is set.
	index  []indexEntry
	ix     *fileIndex
	sealed bool
	// The per-stream index: live (all entries in memory) while the segment
	// is active, streams (directory in memory, entries in the .streams
	// file) once it is sealed. Exactly one is set.
	live    map[string]*liveStream
	streams *streamsIndex
	// digest is the CRC-32C of the .log's size bytes, when digestKnown:
	// kept up to date by Append and by any full walk (Open of the active
	// segment, an index rebuild, ReplaceSealed, Digest). A sealed segment
	// opened with good index files is not read whole, so its digest is
	// unknown until Digest reads it.
	digest      uint32
	digestKnown bool
	// remote is set on a tiered segment: its .log bytes are this object
	// (f reads it), path is its <B>.tiered marker, and its index files
	// are local.
	remote *RemoteRef
}

func (s *segment) info() SegmentInfo {
	return SegmentInfo{
		BaseOffset: s.base, NextOffset: s.next, Size: s.size, Path: s.path,
		Sealed: s.sealed, FirstTimestamp: s.firstTS, LastTimestamp: s.lastTS,
		Digest: s.digest, DigestKnown: s.digestKnown, Tiered: s.remote != nil, Key: s.key(),
	}
}

func (s *segment) key() string {
	if s.remote == nil {
		return ""
	}
	return s.remote.Key
}

// SegmentInfo describes one segment at the time Segments was called.
type SegmentInfo struct {
	BaseOffset uint64 // offset of the first batch
	NextOffset uint64 // offset after the last batch (BaseOffset if empty)
	Size       int64  // bytes of complete batches
	// Path is the .log file, or the <B>.tiered marker of a tiered segment.
	Path   string
	Sealed bool // sealed segments never change again
	// FirstTimestamp and LastTimestamp are the timestamps, in unix
	// nanoseconds, of the first and last batch; 0 for an empty segment.
	FirstTimestamp, LastTimestamp int64
	// Digest is the CRC-32C of the segment's Size bytes, if DigestKnown
	// (see Log.Digest, which computes it when not).
	Digest      uint32
	DigestKnown bool
	// Tiered is set when the segment's .log was evicted (Evict): its bytes
	// are the object Key, read through Options.Remote.
	Tiered bool
	Key    string
}

// RecoveryInfo reports what Open did to bring the directory to a
// consistent state.
type RecoveryInfo struct {
	// Path is the active segment's .log file.
	Path string
	// TruncatedBytes were cut from the tail of the active segment, starting
	// at TruncatedAt, because they did not hold a complete, intact batch.
	TruncatedBytes int64
	TruncatedAt    int64
	// Reason says why the tail was cut; empty if nothing was.
	Reason string
	// RebuiltIndexes lists sealed segments (their .log paths) any of whose
	// index files (.index, .timeindex, .streams) were missing or invalid
	// and were rebuilt from the log.
	RebuiltIndexes []string
	// FetchedIndexes lists tiered segments (their .tiered markers) whose
	// index files were missing or invalid and were taken from the
	// store's index bundle, without reading the object.
	FetchedIndexes []string
	// IndexBundleFailures says, per tiered segment whose index files were
	// rebuilt from its object (in RebuiltIndexes), why its index bundle
	// was not used ("<marker>: <reason>": missing, as for objects tiered
	// before bundles were uploaded, unreadable, or failing its checks).
	IndexBundleFailures []string
	// RemovedTemp lists leftover temporary files that were removed.
	RemovedTemp []string
	// RemovedMarkers lists .tiered markers found beside their segment's
	// .log (an Evict the crash cut short) and removed: the local copy wins.
	RemovedMarkers []string
	// Damaged lists the sealed segments that failed Open's checks and were
	// kept as damaged (Options.OpenDamaged); without that option Open
	// fails on the first instead.
	Damaged []DamagedSegment
}

// DamagedSegment is a sealed segment whose bytes are known to be bad.
type DamagedSegment struct {
	BaseOffset uint64
	Path       string // the .log file
	Err        error  // a *CorruptionError saying where and why
}

// Log is an append-only sequence of record batches stored as segment files
// in one directory. One goroutine writes (Append, Sync, Close; they are
// also serialized against each other); any number read concurrently.
type Log struct {
	dir      string
	opts     Options
	fs       FS
	idx      indexer
	recovery RecoveryInfo
	// repl serializes ReplaceSealed, DropSealed and Evict calls.
	repl sync.Mutex
	// tiered holds, during Open, the bases of the .tiered markers found.
	tiered map[uint64]bool

	// w is the writer's state.
	w struct {
		sync.Mutex
		err       error // sticky; wraps ErrWriteFailed
		dirDirty  bool  // a file was created since the last directory fsync
		closed    bool
		collector streamCollector
		entryBuf  []byte // concatenates the batches of one entry for one write
	}

	mu struct {
		sync.RWMutex
		segs    []*segment // oldest first; the last one is active
		floor   uint64     // reads below it are compacted (SetFirstOffset)
		last    record.Header
		hasLast bool
		closed  bool
	}
}

// Recovery reports what Open repaired.
func (l *Log) Recovery() RecoveryInfo { return l.recovery }

// Dir is the log's directory.
func (l *Log) Dir() string { return l.dir }

// FirstOffset is the first offset readers may ask for: the first offset
// still stored, or the floor SetFirstOffset raised above it.
func (l *Log) FirstOffset() uint64 {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.firstLocked()
}

func (l *Log) firstLocked() uint64 { return max(l.mu.segs[0].base, l.mu.floor) }

// SetFirstOffset raises the log's read floor to first (clamped to
// NextOffset; it never goes down): reads below it get an
// *OffsetCompactedError even while the segments that hold those offsets
// are still on disk, because something (a snapshot being written) pins
// them, or because they also hold offsets at or above first. The floor is
// not persisted: the caller that decided it (the FSM's replicated state)
// sets it again after Open. DropSealedBefore removes the files.
func (l *Log) SetFirstOffset(first uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.mu.floor = max(l.mu.floor, min(first, l.mu.segs[len(l.mu.segs)-1].next))
}

// NextOffset is the offset the next appended batch must start at.
func (l *Log) NextOffset() uint64 {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.mu.segs[len(l.mu.segs)-1].next
}

// ActiveBase is the base offset of the active segment: every offset below
// it is in a sealed segment (or was dropped).
func (l *Log) ActiveBase() uint64 {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.active().base
}

// LastHeader returns the header of the last batch, or false if the log
// holds none.
func (l *Log) LastHeader() (record.Header, bool) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.mu.last, l.mu.hasLast
}

// Segments returns a consistent description of every segment, oldest
// first. The active segment's Size counts only complete batches.
func (l *Log) Segments() []SegmentInfo {
	l.mu.RLock()
	defer l.mu.RUnlock()
	out := make([]SegmentInfo, len(l.mu.segs))
	for i, s := range l.mu.segs {
		out[i] = s.info()
	}
	return out
}

func (l *Log) active() *segment { return l.mu.segs[len(l.mu.segs)-1] }

// Append writes one batch at the end of the log with a single write. It
// does not fsync: the Raft log is the write-ahead log, and Sync makes the
// batch durable. b must be exactly one verified batch whose records all
// decode, starting at NextOffset, whose timestamp is not older than the
// last batch's. Append also adds the batch to the active segment's
// in-memory stream index.
func (l *Log) Append(b record.Batch) error { return l.AppendEntry(b) }

// AppendEntry appends the batches of one Raft entry with a single write,
// all into the same segment (it rolls, if needed, before the first), so a
// crash can tear only the tail of the active segment. Every batch but the
// last must carry record.AttrContinued; Open drops a trailing entry whose
// last batch is missing.
func (l *Log) AppendEntry(batches ...record.Batch) error {
	l.w.Lock()
	defer l.w.Unlock()
	if err := l.checkWritableLocked(); err != nil {
		return err
	}
	a := l.active()
	hs, streams, total, err := l.checkEntryLocked(a.next, batches)
	if err != nil {
		return err
	}
	last := hs[len(hs)-1]
	if a.size > 0 && (a.size+total > l.opts.SegmentBytes || last.BaseOffset-a.base > math.MaxUint32) {
		if err := l.rollLocked(); err != nil {
			return err
		}
		a = l.active()
	}
	buf := batches[0]
	if len(batches) > 1 {
		l.w.entryBuf = l.w.entryBuf[:0]
		for _, b := range batches {
			l.w.entryBuf = append(l.w.entryBuf, b...)
		}
		buf = l.w.entryBuf
	}
	if _, err := a.f.Write(buf); err != nil {
		return l.failLocked("append to "+a.path, err)
	}
	l.mu.Lock()
	for i, h := range hs {
		pos := a.size
		if l.idx.want(a.index, pos) {
			a.index = append(a.index, indexEntry{rel: uint32(h.BaseOffset - a.base), pos: uint32(pos), ts: h.Timestamp})
		}
		addBatch(a.live, a.base, h, pos, streams[i])
		if pos == 0 {
			a.firstTS = h.Timestamp
		}
		a.lastTS = h.Timestamp
		a.size += int64(h.Size())
		a.next = h.NextOffset()
	}
	a.digest = crc32.Update(a.digest, castagnoli, buf)
	l.mu.last, l.mu.hasLast = last, true
	l.mu.Unlock()
	return nil
}

// checkEntryLocked verifies the batches of an entry before anything is
// written: intact, contiguous from next, timestamps in order, records
// decodable, and the continued bit on all but the last.
func (l *Log) checkEntryLocked(next uint64, batches []record.Batch) ([]record.Header, [][]batchStream, int64, error) {
	if len(batches) == 0 {
		return nil, nil, 0, fmt.Errorf("%w: empty entry", ErrInvalidBatch)
	}
	hs := make([]record.Header, len(batches))
	streams := make([][]batchStream, len(batches))
	var total int64
	prevTS, hasPrev := l.mu.last.Timestamp, l.mu.hasLast
	for i, b := range batches {
		h, err := record.Verify(b)
		if err != nil {
			return nil, nil, 0, fmt.Errorf("%w: %v", ErrInvalidBatch, err)
		}
		if h.Size() != len(b) {
			return nil, nil, 0, fmt.Errorf("%w: %d trailing bytes after the batch", ErrInvalidBatch, len(b)-h.Size())
		}
		if h.BaseOffset != next {
			return nil, nil, 0, fmt.Errorf("%w: batch starts at %d, log at %d", ErrOffsetMismatch, h.BaseOffset, next)
		}
		if hasPrev && h.Timestamp < prevTS {
			return nil, nil, 0, fmt.Errorf("%w: batch at offset %d has timestamp %d, last batch %d",
				ErrTimestampOrder, h.BaseOffset, h.Timestamp, prevTS)
		}
		if h.Continued() != (i < len(batches)-1) {
			return nil, nil, 0, fmt.Errorf("%w: batch %d of %d of an entry has continued=%v", ErrInvalidBatch, i+1, len(batches), h.Continued())
		}
		// Decoding every record here both feeds the stream index and
		// refuses a batch that Open would cut off as corrupt. The collector
		// reuses its result, so keep a copy per batch.
		st, err := l.w.collector.collect(b)
		if err != nil {
			return nil, nil, 0, fmt.Errorf("%w: %v", ErrInvalidBatch, err)
		}
		hs[i], streams[i] = h, append([]batchStream(nil), st...)
		next, prevTS, hasPrev = h.NextOffset(), h.Timestamp, true
		total += int64(len(b))
	}
	return hs, streams, total, nil
}

func (l *Log) checkWritableLocked() error {
	if l.w.closed {
		return ErrClosed
	}
	return l.w.err
}

// failLocked makes a write error sticky and returns it.
func (l *Log) failLocked(op string, err error) error {
	l.w.err = fmt.Errorf("%w: %s: %v", ErrWriteFailed, op, err)
	return l.w.err
}

// Sync makes every appended batch durable: it fsyncs the active segment
// and, if a segment file was created since the last Sync, the directory.
func (l *Log) Sync() error {
	l.w.Lock()
	defer l.w.Unlock()
	if err := l.checkWritableLocked(); err != nil {
		return err
	}
	return l.syncLocked()
}

func (l *Log) syncLocked() error {
	a := l.active()
	if err := a.f.Sync(); err != nil {
		return l.failLocked("fsync "+a.path, err)
	}
	if l.w.dirDirty {
		if err := l.fs.SyncDir(l.dir); err != nil {
			return l.failLocked("fsync directory "+l.dir, err)
		}
		l.w.dirDirty = false
	}
	return nil
}

// rollLocked seals the active segment and starts a new one at NextOffset.
// Sealing fsyncs the .log first, then publishes the index files (.streams
// last), then fsyncs the directory, so index files never describe unsynced
// bytes. The in-memory indexes are then dropped for the files. Readers
// keep reading the sealed segment through its open file; readers that
// captured its in-memory stream entries keep using them.
func (l *Log) rollLocked() error {
	a := l.active()
	if err := a.f.Sync(); err != nil {
		return l.failLocked("fsync "+a.path, err)
	}
	if err := writeIndexFiles(l.fs, l.dir, a.base, a.index); err != nil {
		return l.failLocked("write index of "+a.path, err)
	}
	spath := filepath.Join(l.dir, streamsName(a.base))
	if err := writeFileAtomic(l.fs, spath, encodeStreams(a.base, a.next, a.size, a.live)); err != nil {
		return l.failLocked("write "+spath, err)
	}
	if err := l.fs.SyncDir(l.dir); err != nil {
		return l.failLocked("fsync directory "+l.dir, err)
	}
	sx, err := openStreams(l.fs, spath, a.base, a.size)
	if err != nil {
		return l.failLocked("reopen "+spath, err)
	}
	x, err := newFileIndex(l.fs, l.dir, a.base, int64(len(a.index)))
	if err != nil {
		sx.f.Close()
		return l.failLocked("reopen index of "+a.path, err)
	}
	path := filepath.Join(l.dir, FileName(a.next))
	f, err := l.fs.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL|os.O_APPEND, 0o644)
	if err != nil {
		sx.f.Close()
		x.f.Close()
		return l.failLocked("create "+path, err)
	}
	l.w.dirDirty = true
	s := &segment{base: a.next, path: path, f: f, next: a.next, live: make(map[string]*liveStream), digestKnown: true}
	s.refs.Store(1)
	l.mu.Lock()
	a.sealed = true
	a.streams, a.live = sx, nil
	a.ix, a.index = x, nil
	l.mu.segs = append(l.mu.segs, s)
	l.mu.Unlock()
	return nil
}

// Close fsyncs the active segment, publishes its index files and closes
// every file. It is idempotent. Reads after Close fail with ErrClosed.
func (l *Log) Close() error {
	l.w.Lock()
	defer l.w.Unlock()
	if l.w.closed {
		return nil
	}
	l.w.closed = true
	l.mu.Lock()
	l.mu.closed = true
	l.mu.Unlock()
	err := l.w.err
	if err == nil {
		err = l.syncLocked()
	}
	if a := l.active(); err == nil && len(a.index) > 0 {
		if werr := writeIndexFiles(l.fs, l.dir, a.base, a.index); werr != nil {
			err = l.failLocked("write index of "+a.path, werr)
		} else if werr := l.fs.SyncDir(l.dir); werr != nil {
			err = l.failLocked("fsync directory "+l.dir, werr)
		}
	}
	for _, s := range l.mu.segs {
		// Files a reader still holds close when it releases them.
		if cerr := s.release(); err == nil {
			err = cerr
		}
	}
	return err
}

// acquire takes a reference on the segment's files. The caller holds l.mu
// (read or write) and found s in l.mu.segs, so the Log's own reference is
// still there and the files are open.
func (s *segment) acquire() { s.refs.Add(1) }

// release drops a reference and closes the files with the last one.
func (s *segment) release() error {
	if s.refs.Add(-1) == 0 {
		return s.closeFiles()
	}
	return nil
}

// closeFiles closes the segment's open files and returns the first error.
func (s *segment) closeFiles() error {
	var err error
	closeOne := func(f File, path string) {
		if cerr := f.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("segment: close %s: %w", path, cerr)
		}
	}
	closeOne(s.f, s.path)
	if s.streams != nil {
		closeOne(s.streams.f, s.streams.path)
	}
	if s.ix != nil {
		closeOne(s.ix.f, s.ix.path)
	}
	return err
}

// errClosedRead turns the error of a read that raced with Close into
// ErrClosed.
func (l *Log) errClosedRead(err error) error {
	if errors.Is(err, os.ErrClosed) {
		return fmt.Errorf("%w: %v", ErrClosed, err)
	}
	return err
}
