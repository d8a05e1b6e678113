package segment

import (
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"sort"

	"github.com/tsstore/tsstore/record"
)

// minRead is the smallest pread ReadBatches issues (unless the segment
// ends sooner), so that tiny maxBytes values do not mean tiny syscalls.
const minRead = 4 << 10

// segView is what a reader needs of one segment, captured under the read
// lock so that the reader can work without it.
type segView struct {
	seg    *segment // acquired by view; the reader releases it
	f      File
	path   string
	end    int64  // bytes of complete batches at capture time
	pos    int64  // start position for the reader: an index entry
	expect uint64 // base offset of the batch at pos
	slack  int64  // bytes from pos to the next index entry (or end)
	// ixPath and ixPos locate the index entry in a sealed segment's .index
	// file; ixPath is empty for the active segment.
	ixPath string
	ixPos  int64
}

// view locates the segment holding from and its index entry at or before
// from. done is true when from >= NextOffset. A sealed segment's entry is
// looked up in its .index file after the read lock is released.
func (l *Log) view(from uint64) (v segView, done bool, err error) {
	v, ix, base, next, done, err := l.captureView(from)
	if ix == nil || done || err != nil {
		return v, done, err
	}
	e, k, nextPos, err := ix.find(from-base, next-base, v.end, base)
	if err != nil {
		v.seg.release()
		return v, false, err
	}
	v.pos, v.expect, v.slack = int64(e.pos), base+uint64(e.rel), max(nextPos-int64(e.pos), 0)
	v.ixPath, v.ixPos = ix.path, k*IndexEntrySize
	return v, false, nil
}

// captureView does view's work under the read lock: all of it for the
// active segment; for a sealed one it returns the segment's index files,
// base offset and next offset instead of an index entry. Unless it returns
// an error or done, it has acquired v.seg, which the caller releases.
func (l *Log) captureView(from uint64) (v segView, ix *fileIndex, base, next uint64, done bool, err error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	segs := l.mu.segs
	switch {
	case l.mu.closed:
		return v, nil, 0, 0, false, ErrClosed
	case from >= segs[len(segs)-1].next:
		return v, nil, 0, 0, true, nil
	case from < l.firstLocked():
		return v, nil, 0, 0, false, &OffsetCompactedError{Offset: from, FirstOffset: l.firstLocked()}
	}
	i := sort.Search(len(segs), func(i int) bool { return segs[i].base > from }) - 1
	s := segs[i]
	if s.damaged != nil {
		return v, nil, 0, 0, false, s.damaged
	}
	s.acquire()
	v = segView{seg: s, f: s.f, path: s.path, end: s.size}
	if s.ix != nil {
		return v, s.ix, s.base, s.next, false, nil
	}
	j := lookup(s.index, from-s.base)
	e := s.index[j]
	v.pos, v.expect, v.slack = int64(e.pos), s.base+uint64(e.rel), s.size-int64(e.pos)
	if j+1 < len(s.index) {
		v.slack = int64(s.index[j+1].pos - e.pos)
	}
	return v, nil, 0, 0, false, nil
}

// badBatch reports that the bytes at at are not the batch the reader
// expects. At the position a sealed segment's index entry points at, the
// entry may be what is wrong, so the error names the .index file.
func (v *segView) badBatch(at int64, expect uint64, format string, args ...any) error {
	reason := fmt.Sprintf(format, args...)
	if at == v.pos && v.ixPath != "" {
		return corruptf(v.ixPath, v.ixPos, expect, "entry says offset %d is at position %d of %s, but there: %s (the index or the log is damaged; Verify tells which)",
			expect, at, v.path, reason)
	}
	return corruptf(v.path, at, expect, "%s", reason)
}

// reader is the state of one ReadBatches call.
type reader struct {
	dst      []byte
	added    int // bytes of batches appended to dst
	maxBytes int
	from     uint64
	next     uint64 // NextOffset of the last batch appended
}

// ReadBatches appends to dst complete, CRC-verified batches, starting with
// the batch that contains offset from, and returns the extended slice and
// the offset following the last batch appended. It appends a batch only
// while the total stays within maxBytes, except that it always appends at
// least one batch when from < NextOffset, however large. It never decodes
// records: it finds the position in the sparse index and reads each chunk
// with one pread into dst, reusing dst's capacity.
//
// If from >= NextOffset it returns dst unchanged and next == from. If from
// < FirstOffset the error is an *OffsetCompactedError, which wraps
// ErrOffsetCompacted. Corruption is a
// *CorruptionError. It is safe to call concurrently with Append and never
// returns a partially written batch.
func (l *Log) ReadBatches(dst []byte, from uint64, maxBytes int) (out []byte, next uint64, err error) {
	return l.ReadBatchesTo(dst, from, math.MaxUint64, maxBytes)
}

// ReadBatchesTo is ReadBatches for a reader that wants the offsets below
// end only: it does not go on to (nor prefetch) a segment that starts at
// or after end. A segment it does not need is never read, so a tiered
// segment's object beyond end is neither fetched nor able to fail the
// read (a damaged one is DataLoss for the reads of its own offsets only).
// The batches of the last segment read may still reach past end.
func (l *Log) ReadBatchesTo(dst []byte, from, end uint64, maxBytes int) (out []byte, next uint64, err error) {
	defer func() { err = l.withKey(err) }()
	r := reader{dst: dst, maxBytes: maxBytes, from: from, next: from}
	for {
		v, done, err := l.view(r.from)
		if err != nil || done {
			return r.dst, r.next, l.errClosedRead(err)
		}
		l.prefetchNext(v.seg, end)
		full, err := r.readSegment(v)
		v.seg.release()
		if err != nil {
			return r.dst, r.next, l.errClosedRead(err)
		}
		if full || r.next == r.from || r.next >= end {
			// The budget is spent, or the reader has every offset below
			// end. (The second test is defensive: the view held from, so
			// at least one batch was appended.)
			return r.dst, r.next, nil
		}
		// The segment ended; go on with the next one or with what was
		// appended to this one meanwhile.
		r.from = r.next
	}
}

// readSegment appends batches of one segment, from v.pos to v.end. It
// reports full when the next batch would exceed the budget.
func (r *reader) readSegment(v segView) (full bool, err error) {
	pos, expect := v.pos, v.expect
	need := v.slack + min(int64(max(r.maxBytes-r.added, 0)), v.end-v.pos) // no overflow for huge maxBytes
	for pos < v.end {
		n := int(min(max(need, minRead), v.end-pos))
		w := len(r.dst)
		r.dst = slices.Grow(r.dst, n)[:w+n]
		buf := r.dst[w:]
		m, err := v.f.ReadAt(buf, pos)
		if m < n {
			r.dst = r.dst[:w]
			if err == nil || errors.Is(err, io.EOF) {
				return false, corruptf(v.path, pos, expect, "file ends before %d bytes of published batches", v.end)
			}
			return false, fmt.Errorf("segment: read %s at %d: %w", v.path, pos, err)
		}
		kept, consumed, want, full, err := r.walk(v, buf, pos, &expect)
		r.dst = r.dst[:w+kept]
		if err != nil || full {
			return full, err
		}
		pos += consumed
		need = max(want, int64(r.maxBytes-r.added))
	}
	return false, nil
}

// walk checks the batches in buf, which was read at file position pos.
// Batches that end before r.from are skipped; the others are verified and
// moved to the front of buf. It returns the bytes kept, the bytes of buf
// consumed, and how many bytes the next read needs to make progress.
func (r *reader) walk(v segView, buf []byte, pos int64, expect *uint64) (kept int, consumed int64, want int64, full bool, err error) {
	off := 0
	for off < len(buf) {
		at := pos + int64(off)
		if len(buf)-off < record.HeaderSize {
			if v.end-at < record.HeaderSize {
				return kept, int64(off), 0, false, v.badBatch(at, *expect, "%d bytes left, less than a batch header", v.end-at)
			}
			return kept, int64(off), record.HeaderSize, false, nil
		}
		h, err := record.ParseHeader(buf[off:])
		if err != nil {
			return kept, int64(off), 0, false, v.badBatch(at, *expect, "%v", err)
		}
		size := h.Size()
		switch {
		case h.BaseOffset != *expect:
			return kept, int64(off), 0, false, v.badBatch(at, *expect, "batch base offset %d, want %d", h.BaseOffset, *expect)
		case at+int64(size) > v.end:
			return kept, int64(off), 0, false, v.badBatch(at, *expect, "batch of %d bytes runs past the end of the segment", size)
		}
		skip := h.NextOffset() <= r.from
		if !skip && r.added > 0 && r.added+size > r.maxBytes {
			return kept, int64(off), 0, true, nil
		}
		if off+size > len(buf) {
			if skip {
				// Step over it without reading it.
				*expect = h.NextOffset()
				return kept, int64(off + size), 0, false, nil
			}
			return kept, int64(off), int64(size), false, nil
		}
		if !skip {
			if _, err := record.Verify(buf[off : off+size]); err != nil {
				return kept, int64(off), 0, false, corruptf(v.path, at, *expect, "%v", err)
			}
			if kept != off {
				copy(buf[kept:], buf[off:off+size])
			}
			kept += size
			r.added += size
			r.next = h.NextOffset()
		}
		*expect = h.NextOffset()
		off += size
	}
	return kept, int64(off), 0, false, nil
}

// Scan calls fn with each verified batch, in order, from the batch that
// contains from up to NextOffset as of the call. The batch passed to fn is
// valid only during the call. An error from fn stops the scan and is
// returned as is.
func (l *Log) Scan(from uint64, fn func(b record.Batch) error) error {
	end := l.NextOffset()
	var buf []byte
	for from < end {
		var err error
		buf, from, err = l.ReadBatches(buf[:0], from, scanBufSize)
		if err != nil {
			return err
		}
		for rest := buf; len(rest) > 0; {
			h, _ := record.ParseHeader(rest) // verified by ReadBatches
			if err := fn(record.Batch(rest[:h.Size()])); err != nil {
				return err
			}
			rest = rest[h.Size():]
		}
		if len(buf) == 0 {
			return nil
		}
	}
	return nil
}

// OffsetForTime returns the first offset whose batch timestamp is >= ts,
// or NextOffset if there is none. It binary-searches the segments by
// timestamp, then the segment's time index (in memory for the active
// segment, in the .timeindex file for a sealed one), then reads batch
// headers from that index entry on: at most about IndexIntervalBytes of
// log. If a sealed segment's index entry does not match its batch, it
// scans the segment from its start instead. If a read fails (I/O error,
// corruption, Close) it returns the offset it started from, which is at
// or before the answer, so a reader starting there sees the error itself.
func (l *Log) OffsetForTime(ts int64) uint64 {
	l.mu.RLock()
	segs := l.mu.segs
	n := len(segs)
	if segs[n-1].size == 0 {
		n-- // an empty active segment has no timestamps
	}
	i := sort.Search(n, func(i int) bool { return segs[i].lastTS >= ts })
	if i == n {
		next := segs[len(segs)-1].next
		l.mu.RUnlock()
		return next
	}
	s := segs[i]
	if s.damaged != nil {
		// Its reader starts here and gets the corruption error.
		l.mu.RUnlock()
		return s.base
	}
	s.acquire()
	defer s.release()
	f, base, end, ix, firstTS, lastTS := s.f, s.base, s.size, s.ix, s.firstTS, s.lastTS
	var e indexEntry
	if ix == nil {
		j := sort.Search(len(s.index), func(j int) bool { return s.index[j].ts >= ts }) - 1
		e = s.index[max(j, 0)]
	}
	l.mu.RUnlock()

	if ix == nil {
		off, _ := scanForTime(f, base, end, e, ts, false)
		return off
	}
	if e, err := ix.findTime(l.fs, ts, firstTS, lastTS, base); err == nil {
		if off, ok := scanForTime(f, base, end, e, ts, true); ok {
			return off
		}
	}
	off, _ := scanForTime(f, base, end, indexEntry{}, ts, false)
	return off
}

// scanForTime reads batch headers from index entry e on and returns the
// offset of the first batch whose timestamp is >= ts. If check, the first
// batch must be the one e describes (offset and timestamp); if it is not,
// ok is false. A failed read returns e's offset.
func scanForTime(f File, base uint64, end int64, e indexEntry, ts int64, check bool) (off uint64, ok bool) {
	start := base + uint64(e.rel)
	sc := newScanner(f, int64(e.pos), end, 2*minRead)
	for first := true; ; first = false {
		_, _, h, err := sc.next()
		if err != nil {
			return start, !(first && check)
		}
		if first && check && (h.BaseOffset != start || h.Timestamp != e.ts) {
			return start, false
		}
		if h.Timestamp >= ts {
			return h.BaseOffset, true
		}
	}
}
