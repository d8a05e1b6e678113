package segment

import (
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"sort"

	"github.com/tsstore/tsstore/record"
)

// maxStreamRun bounds one coalesced pread of adjacent batches of a stream.
const maxStreamRun = 1 << 20

// streamsIndex is a sealed segment's open .streams file and its
// directory. Entries stay on disk and are read block by block on demand.
type streamsIndex struct {
	f          File
	path       string
	header     streamsHeader
	dirs       []streamDir
	entriesPos int64 // file position of the entries section
}

// openStreams opens the .streams file of a sealed segment and checks its
// header and directory against the segment (base offset, .log size). The
// caller checks header.next once it knows the segment's end. Entry blocks
// are checked when read. Any error means the file must be rebuilt.
func openStreams(fsys FS, path string, base uint64, logSize int64) (sx *streamsIndex, err error) {
	f, err := fsys.OpenFile(path, os.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	hb := make([]byte, min(fi.Size(), StreamsHeaderSize))
	if _, err := f.ReadAt(hb, 0); err != nil {
		return nil, err
	}
	h, err := decodeStreamsHeader(hb, fi.Size())
	if err != nil {
		return nil, err
	}
	if h.base != base || h.logSize != uint64(logSize) {
		return nil, fmt.Errorf("describes a log at offset %d of %d bytes, not %d of %d", h.base, h.logSize, base, logSize)
	}
	dir := make([]byte, h.dirSize)
	if _, err := f.ReadAt(dir, StreamsHeaderSize); err != nil {
		return nil, err
	}
	dirs, err := decodeStreamsDir(h, dir)
	if err != nil {
		return nil, err
	}
	return &streamsIndex{f: f, path: path, header: h, dirs: dirs, entriesPos: StreamsHeaderSize + int64(h.dirSize)}, nil
}

// readAll reads the whole file, for Verify.
func (sx *streamsIndex) readAll() ([]byte, error) {
	n := StreamsHeaderSize + int64(sx.header.dirSize) + entriesSize(sx.header.entries)
	b := make([]byte, n)
	m, err := sx.f.ReadAt(b, 0)
	if int64(m) < n {
		if err == nil || errors.Is(err, io.EOF) {
			return nil, corruptf(sx.path, int64(m), sx.header.base, "file ends at %d bytes, want %d", m, n)
		}
		return nil, fmt.Errorf("segment: read %s: %w", sx.path, err)
	}
	return b, nil
}

// entrySource yields one stream's entries in one segment, from memory
// (active segment) or from the .streams file (sealed), caching the last
// block read.
type entrySource struct {
	mem   []streamEntry
	sx    *streamsIndex // nil: use mem
	first uint32        // index of the stream's first entry in the file
	n     int
	blk   int64  // block held in body, -1 if none
	body  []byte // verified entry bytes of block blk
	raw   []byte
}

func (src *entrySource) at(i int) (streamEntry, error) {
	if src.sx == nil {
		return src.mem[i], nil
	}
	g := int64(src.first) + int64(i)
	if blk := g / StreamsBlockEntries; blk != src.blk {
		sx := src.sx
		rel, n := blockSpan(sx.header.entries, blk)
		pos, size := sx.entriesPos+rel, n*StreamEntrySize+4
		src.raw = slices.Grow(src.raw[:0], size)[:size]
		m, err := sx.f.ReadAt(src.raw, pos)
		if m < size {
			if err == nil || errors.Is(err, io.EOF) {
				return streamEntry{}, corruptf(sx.path, pos, sx.header.base, "file ends inside entry block %d", blk)
			}
			return streamEntry{}, fmt.Errorf("segment: read %s at %d: %w", sx.path, pos, err)
		}
		body, err := checkBlock(src.raw, blk)
		if err != nil {
			return streamEntry{}, corruptf(sx.path, pos, sx.header.base, "%v", err)
		}
		src.body, src.blk = body, blk
	}
	return decodeStreamEntry(src.body[(g%StreamsBlockEntries)*StreamEntrySize:]), nil
}

// search returns the smallest i for which pred holds, assuming pred is
// false then true over the entries (sort.Search).
func (src *entrySource) search(pred func(streamEntry) bool) (int, error) {
	var err error
	i := sort.Search(src.n, func(i int) bool {
		if err != nil {
			return true
		}
		e, rerr := src.at(i)
		if rerr != nil {
			err = rerr
			return true
		}
		return pred(e)
	})
	return i, err
}

// streamSeg is what a stream reader needs of one segment, captured under
// the read lock.
type streamSeg struct {
	seg         *segment // acquired by the finder; the reader releases it
	stream      string
	base        uint64
	limit       uint64 // entries of batches at or after this offset are ignored
	log         File
	logPath     string
	logEnd      int64 // bytes of complete batches at capture time
	firstOffset uint64
	endOffset   uint64 // offset after the stream's last batch in the segment
	maxVer      uint64
	unordered   bool
	src         entrySource
}

// streamSegLocked captures s's index of stream, or reports that s holds
// none of it. The caller holds l.mu (read or write).
func (s *segment) streamSegLocked(stream string) (v streamSeg, ok bool) {
	v = streamSeg{seg: s, stream: stream, base: s.base, limit: s.next, log: s.f, logPath: s.path, logEnd: s.size}
	switch {
	case s.streams != nil:
		d, ok := lookupStream(s.streams.dirs, stream)
		if !ok {
			return v, false
		}
		v.firstOffset, v.endOffset, v.maxVer = d.firstOffset, d.endOffset, d.maxVer
		v.unordered = d.flags&streamFlagUnordered != 0
		v.src = entrySource{sx: s.streams, first: d.first, n: int(d.count), blk: -1}
	default:
		ls := s.live[stream]
		if ls == nil {
			return v, false
		}
		es := ls.entries
		v.firstOffset, v.endOffset = s.base+uint64(es[0].rel), s.base+es[len(es)-1].endRel()
		v.maxVer, v.unordered = ls.maxVer, ls.unordered
		v.src = entrySource{mem: es, n: len(es), blk: -1}
	}
	return v, true
}

// indexCorrupt reports an index entry that does not describe the batch it
// points at: the .streams file of a sealed segment, the .log itself for
// the active one (its index was built from the bytes written).
func (v *streamSeg) indexCorrupt(e streamEntry, format string, args ...any) error {
	path := v.logPath
	if v.src.sx != nil {
		path = v.src.sx.path
	}
	return corruptf(path, int64(e.pos), v.base+uint64(e.rel), "index entry of stream %q: %s", v.stream, fmt.Sprintf(format, args...))
}

// checkBatch verifies that b, read at e.pos, is the batch e describes.
func (v *streamSeg) checkBatch(e streamEntry, b []byte) (record.Header, error) {
	expect := v.base + uint64(e.rel)
	h, err := record.ParseHeader(b)
	if err != nil {
		return h, corruptf(v.logPath, int64(e.pos), expect, "%v", err)
	}
	if h.BaseOffset != expect || h.Size() != int(e.size) || h.LastDelta != e.span {
		return h, v.indexCorrupt(e, "says offset %d, %d bytes, last delta %d; the log has offset %d, %d bytes, last delta %d",
			expect, e.size, e.span, h.BaseOffset, h.Size(), h.LastDelta)
	}
	if _, err := record.Verify(b); err != nil {
		return h, corruptf(v.logPath, int64(e.pos), expect, "%v", err)
	}
	return h, nil
}

// readAt reads exactly len(b) bytes of the log at pos.
func (v *streamSeg) readAt(b []byte, pos int64, e streamEntry) error {
	if pos+int64(len(b)) > v.logEnd {
		return v.indexCorrupt(e, "batch at %d runs past the %d bytes of the log", pos, v.logEnd)
	}
	m, err := v.log.ReadAt(b, pos)
	if m < len(b) {
		if err == nil || errors.Is(err, io.EOF) {
			return corruptf(v.logPath, pos, v.base+uint64(e.rel), "file ends before %d bytes of published batches", v.logEnd)
		}
		return fmt.Errorf("segment: read %s at %d: %w", v.logPath, pos, err)
	}
	return nil
}

// StreamBatches appends to dst whole, CRC-verified raw batches that hold at
// least one record of stream (with a StreamVersion > 0), in offset order,
// starting with the first such batch whose span ends at or after
// fromOffset. It appends a batch only while the bytes added stay within
// maxBytes, except that it always appends one if any qualifies.
//
// next is the offset after the last appended batch's span if the budget
// stopped the read; if no further batch of the stream exists up to the end
// of the log as of the call, next is NextOffset at the time of the call
// (or fromOffset if that is larger). Resuming from next never misses a
// batch appended later and never repeats one.
//
// It reads the per-stream index (a directory lookup per segment, then the
// stream's entries) and preads exactly the stream's batches: batches of
// other streams are never read. It does not decode records. Below
// FirstOffset the error is an *OffsetCompactedError; corruption of the log
// or of a .streams file is a *CorruptionError. It is safe to call
// concurrently with Append.
func (l *Log) StreamBatches(dst []byte, stream string, fromOffset uint64, maxBytes int) (out []byte, next uint64, err error) {
	return l.StreamBatchesTo(dst, stream, fromOffset, math.MaxUint64, maxBytes)
}

// StreamBatchesTo is StreamBatches for a reader that wants the offsets
// below to only: no segment starting at or after to is read (a tiered
// one's object is neither fetched nor able to fail the read), and next is
// at most to when no batch of the stream was found below it.
func (l *Log) StreamBatchesTo(dst []byte, stream string, fromOffset, to uint64, maxBytes int) (out []byte, next uint64, err error) {
	defer func() { err = l.withKey(err) }()
	r := streamReader{dst: dst, maxBytes: int64(maxBytes), from: fromOffset, next: fromOffset}
	end := to // nextStreamSeg lowers it to NextOffset
	for first := true; ; first = false {
		v, found, err := l.nextStreamSeg(stream, r.from, &end, first)
		if err != nil {
			return r.dst, r.next, err
		}
		if !found {
			return r.dst, max(end, fromOffset), nil
		}
		full, err := r.readSegment(&v)
		v.seg.release()
		if err != nil {
			return r.dst, r.next, l.errClosedRead(err)
		}
		if full {
			return r.dst, r.next, nil
		}
		r.from = max(r.from, v.limit)
	}
}

// nextStreamSeg finds the first segment, from the one holding from on,
// with a batch of stream whose span ends after from and starts before
// end. On the first call it lowers end to NextOffset.
func (l *Log) nextStreamSeg(stream string, from uint64, end *uint64, first bool) (v streamSeg, found bool, err error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	segs := l.mu.segs
	if l.mu.closed {
		return v, false, ErrClosed
	}
	if first {
		*end = min(*end, segs[len(segs)-1].next)
	}
	switch {
	case from >= *end:
		return v, false, nil
	case from < l.firstLocked():
		return v, false, &OffsetCompactedError{Offset: from, FirstOffset: l.firstLocked()}
	}
	i := sort.Search(len(segs), func(i int) bool { return segs[i].base > from }) - 1
	for ; i < len(segs) && segs[i].base < *end; i++ {
		if segs[i].damaged != nil {
			// Whether it holds the stream is unknown: never skip it.
			return v, false, segs[i].damaged
		}
		if v, ok := segs[i].streamSegLocked(stream); ok && v.endOffset > from {
			v.limit = min(v.limit, *end)
			segs[i].acquire()
			return v, true, nil
		}
	}
	return v, false, nil
}

// streamReader is the state of one StreamBatches call.
type streamReader struct {
	dst      []byte
	added    int64
	maxBytes int64
	from     uint64
	next     uint64 // NextOffset of the last batch appended
	run      []streamEntry
	runBytes int64
}

// readSegment appends the stream's batches of one segment, coalescing
// batches that are adjacent in the file into one pread. It reports full
// when the next batch would exceed the budget.
func (r *streamReader) readSegment(v *streamSeg) (full bool, err error) {
	i := 0
	if r.from > v.firstOffset {
		// Spans of one stream's batches do not overlap, so their ends
		// increase with the entry index.
		if i, err = v.src.search(func(e streamEntry) bool { return v.base+e.endRel() > r.from }); err != nil {
			return false, err
		}
	}
	r.run, r.runBytes = r.run[:0], 0
	for ; i < v.src.n; i++ {
		e, err := v.src.at(i)
		if err != nil {
			return false, err
		}
		if v.base+uint64(e.rel) >= v.limit {
			break
		}
		if r.added+r.runBytes > 0 && r.added+r.runBytes+int64(e.size) > r.maxBytes {
			full = true
			break
		}
		if n := len(r.run); n > 0 && (uint64(e.pos) != uint64(r.run[n-1].pos)+uint64(r.run[n-1].size) || r.runBytes >= maxStreamRun) {
			if err := r.flush(v); err != nil {
				return false, err
			}
		}
		r.run = append(r.run, e)
		r.runBytes += int64(e.size)
	}
	return full, r.flush(v)
}

// flush reads the pending run of adjacent batches with one pread and
// verifies each. On error the batches verified so far stay in dst.
func (r *streamReader) flush(v *streamSeg) error {
	if len(r.run) == 0 {
		return nil
	}
	w := len(r.dst)
	r.dst = slices.Grow(r.dst, int(r.runBytes))[:w+int(r.runBytes)]
	if err := v.readAt(r.dst[w:], int64(r.run[0].pos), r.run[0]); err != nil {
		r.dst = r.dst[:w]
		return err
	}
	at := w
	for _, e := range r.run {
		h, err := v.checkBatch(e, r.dst[at:at+int(e.size)])
		if err != nil {
			r.dst = r.dst[:at]
			return err
		}
		at += int(e.size)
		r.added += int64(e.size)
		r.next = h.NextOffset()
	}
	r.run, r.runBytes = r.run[:0], 0
	return nil
}

// StreamOffset returns the global offset of the first record of stream
// whose StreamVersion is >= version (versions are 1-based; 0 is taken as
// 1), and whether there is one in the stored log. It looks the stream up
// in each segment's directory until one holds a version that high, binary
// searches that segment's entries, and reads and decodes one batch.
func (l *Log) StreamOffset(stream string, version uint64) (offset uint64, ok bool, err error) {
	defer func() { err = l.withKey(err) }()
	version = max(version, 1)
	v, found, err := l.streamVersionSeg(stream, version)
	if err != nil || !found {
		return 0, false, err
	}
	offset, err = v.offsetOf(version)
	v.seg.release()
	if err != nil {
		return 0, false, l.errClosedRead(err)
	}
	return offset, true, nil
}

// streamVersionSeg finds the first segment holding a record of stream with
// a version >= version: the answer is in it.
func (l *Log) streamVersionSeg(stream string, version uint64) (v streamSeg, found bool, err error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.mu.closed {
		return v, false, ErrClosed
	}
	for _, s := range l.mu.segs {
		if s.damaged != nil {
			return v, false, s.damaged
		}
		if v, ok := s.streamSegLocked(stream); ok && v.maxVer >= version {
			s.acquire()
			return v, true, nil
		}
	}
	return v, false, nil
}

// offsetOf finds the record in a segment known to hold one.
func (v *streamSeg) offsetOf(version uint64) (uint64, error) {
	var i int
	var err error
	if v.unordered {
		// Versions go back somewhere: bisecting could skip the first
		// match, so look at every entry.
		for ; i < v.src.n; i++ {
			var e streamEntry
			if e, err = v.src.at(i); err != nil || e.last >= version {
				break
			}
		}
	} else {
		i, err = v.src.search(func(e streamEntry) bool { return e.last >= version })
	}
	if err != nil {
		return 0, err
	}
	if i == v.src.n {
		return 0, v.indexCorrupt(streamEntry{}, "directory says version %d exists, entries end before it", v.maxVer)
	}
	e, err := v.src.at(i)
	if err != nil {
		return 0, err
	}
	b := make([]byte, e.size)
	if err := v.readAt(b, int64(e.pos), e); err != nil {
		return 0, err
	}
	if _, err := v.checkBatch(e, b); err != nil {
		return 0, err
	}
	it := record.Batch(b).Records()
	var rec record.Record
	for it.Next(&rec) {
		if rec.StreamVersion >= version && string(rec.Stream) == v.stream {
			return rec.Offset, nil
		}
	}
	if err := it.Err(); err != nil {
		return 0, corruptf(v.logPath, int64(e.pos), v.base+uint64(e.rel), "%v", err)
	}
	return 0, v.indexCorrupt(e, "says versions [%d, %d], the batch has none >= %d", e.first, e.last, version)
}
