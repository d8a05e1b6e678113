package segment

import (
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/tsstore/tsstore/record"
)

// Open opens the log in dir, creating dir and a first empty segment if
// needed, and recovers it:
//
//   - leftover *.tmp files are removed;
//   - every sealed segment (all but the last) gets its index files
//     (.index, .timeindex, .streams) opened and checked cheaply (sizes,
//     first and last entries, the .streams header and directory), or
//     rebuilt if missing or invalid, and the batches after its last index
//     entry verified. Corruption in a sealed segment is an error: it is
//     never truncated or skipped;
//   - segments must be contiguous;
//   - the active (last) segment is scanned in full, which also builds its
//     in-memory stream index, and cut at the first torn or corrupt batch,
//     which is what a crash leaves behind.
//
// Recovery reports what was repaired.
func Open(dir string, opts Options) (*Log, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if opts.FS == nil {
		opts.FS = OSFS{}
	}
	l := &Log{dir: dir, opts: opts, fs: opts.FS, idx: indexer{interval: int64(opts.IndexIntervalBytes)}}
	if err := l.fs.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("segment: open %s: %w", dir, err)
	}
	bases, err := l.listDir()
	if err != nil {
		return nil, err
	}
	if err := l.openSegments(bases); err != nil {
		for _, s := range l.mu.segs {
			s.closeFiles()
		}
		return nil, err
	}
	return l, nil
}

// listDir returns the base offsets of the .log files, sorted, and removes
// temporary files.
func (l *Log) listDir() ([]uint64, error) {
	ents, err := l.fs.ReadDir(l.dir)
	if err != nil {
		return nil, fmt.Errorf("segment: list %s: %w", l.dir, err)
	}
	var bases []uint64
	l.tiered = map[uint64]bool{}
	for _, e := range ents {
		name := e.Name()
		switch {
		case e.IsDir():
		case strings.HasSuffix(name, TmpSuffix):
			p := filepath.Join(l.dir, name)
			if err := l.fs.Remove(p); err != nil {
				return nil, fmt.Errorf("segment: remove %s: %w", p, err)
			}
			l.recovery.RemovedTemp = append(l.recovery.RemovedTemp, p)
		case strings.HasSuffix(name, LogSuffix):
			base, err := parseLogName(name)
			if err != nil {
				return nil, fmt.Errorf("%w (in %s)", err, l.dir)
			}
			bases = append(bases, base)
		case strings.HasSuffix(name, TieredSuffix):
			if base, ok := parseBase(name, TieredSuffix); ok {
				l.tiered[base] = true
			}
		}
	}
	for _, base := range bases {
		if !l.tiered[base] {
			continue
		}
		// An Evict cut short by a crash: the local copy wins (Evict runs
		// again), so the marker goes.
		delete(l.tiered, base)
		p := filepath.Join(l.dir, tieredName(base))
		if err := l.fs.Remove(p); err != nil {
			return nil, fmt.Errorf("segment: remove %s: %w", p, err)
		}
		l.recovery.RemovedMarkers = append(l.recovery.RemovedMarkers, p)
	}
	for base := range l.tiered {
		bases = append(bases, base)
	}
	slices.Sort(bases)
	if len(l.recovery.RemovedTemp) > 0 || len(l.recovery.RemovedMarkers) > 0 {
		if err := l.fs.SyncDir(l.dir); err != nil {
			return nil, fmt.Errorf("segment: fsync %s: %w", l.dir, err)
		}
	}
	return bases, nil
}

func (l *Log) openSegments(bases []uint64) error {
	if len(bases) == 0 {
		return l.createFirst()
	}
	var prev *segment
	for i, base := range bases {
		s := &segment{base: base, path: filepath.Join(l.dir, FileName(base))}
		s.refs.Store(1)
		var err error
		switch {
		case l.tiered[base] && i == len(bases)-1:
			return corruptf(filepath.Join(l.dir, tieredName(base)), 0, base, "the newest segment is tiered: the active segment's .log is missing")
		case l.tiered[base]:
			var ts *segment
			if ts, err = l.openTiered(base); err == nil {
				s = ts
			}
		case i < len(bases)-1:
			err = l.openSealed(s)
			var ce *CorruptionError
			if err != nil && l.opts.OpenDamaged && s.f != nil && errors.As(err, &ce) {
				l.keepDamaged(s, err)
				err = nil
			}
		default:
			err = l.openActive(s)
		}
		if s.f != nil {
			l.mu.segs = append(l.mu.segs, s)
		}
		if err != nil {
			return err
		}
		if prev != nil && prev.damaged != nil {
			prev.next = s.base // a damaged segment ends where the next one starts
		}
		if prev != nil && s.base != prev.next {
			if !l.opts.OpenDamaged {
				return corruptf(s.path, 0, prev.next, "segment starts at offset %d but %s ends at %d", s.base, prev.path, prev.next)
			}
			// The sealed segment before ends short (or long): its tail is
			// what is missing, most likely; keep it as damaged, to end
			// where the next one starts once repaired.
			l.keepDamaged(prev, corruptf(prev.path, prev.size, prev.next, "segment ends at offset %d but the next one, %s, starts at %d",
				prev.next, s.path, s.base))
			prev.next = s.base
		}
		prev = s
	}
	l.boundDamagedTimes()
	return nil
}

// keepDamaged records a sealed segment that failed Open's checks
// (Options.OpenDamaged): it stays in the log, with its .log open and no
// index files, and its readers get err until ReplaceSealed repairs it.
func (l *Log) keepDamaged(s *segment, err error) {
	if s.streams != nil {
		s.streams.f.Close()
	}
	if s.ix != nil {
		s.ix.f.Close()
	}
	s.streams, s.ix, s.index, s.live = nil, nil, nil, nil
	s.sealed, s.damaged = true, err
	if fi, serr := s.f.Stat(); serr == nil {
		s.size = fi.Size()
	}
	l.recovery.Damaged = append(l.recovery.Damaged, DamagedSegment{BaseOffset: s.base, Path: s.path, Err: err})
}

// boundDamagedTimes gives each damaged segment the widest timestamps its
// neighbours allow (timestamps never decrease along the log), so that
// OffsetForTime lands on it for any time it may hold and its reader gets
// the error instead of skipping the segment.
func (l *Log) boundDamagedTimes() {
	segs := l.mu.segs
	for i, s := range segs {
		if s.damaged == nil {
			continue
		}
		s.firstTS, s.lastTS = math.MinInt64, math.MaxInt64
		if i > 0 {
			s.firstTS = segs[i-1].lastTS
		}
		for _, n := range segs[i+1:] {
			if n.damaged == nil && n.size > 0 {
				s.lastTS = n.firstTS
				break
			}
		}
	}
}

func (l *Log) createFirst() error {
	s := &segment{path: filepath.Join(l.dir, FileName(0)), live: make(map[string]*liveStream), digestKnown: true}
	f, err := l.fs.OpenFile(s.path, os.O_RDWR|os.O_CREATE|os.O_EXCL|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("segment: create %s: %w", s.path, err)
	}
	s.f = f
	s.refs.Store(1)
	l.mu.segs = append(l.mu.segs, s)
	l.recovery.Path = s.path
	if err := l.fs.SyncDir(l.dir); err != nil {
		return fmt.Errorf("segment: fsync %s: %w", l.dir, err)
	}
	return nil
}

// openSealed opens a sealed segment, checks its index files cheaply and
// finds its end by verifying every batch after the last index entry (see
// checkSealedIndex). Index files that are missing or fail the checks are
// rebuilt; a .streams file that is missing, damaged or describes another
// log is rebuilt by a full scan that decodes every record.
func (l *Log) openSealed(s *segment) error {
	f, err := l.fs.OpenFile(s.path, os.O_RDONLY, 0)
	if err != nil {
		return fmt.Errorf("segment: open %s: %w", s.path, err)
	}
	s.f, s.sealed = f, true
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("segment: stat %s: %w", s.path, err)
	}
	s.size = fi.Size()
	if s.size == 0 {
		return corruptf(s.path, 0, s.base, "sealed segment is empty")
	}
	return l.indexSealed(s)
}

// indexSealed checks or rebuilds the index files of a sealed segment
// whose .log (s.f, s.size) is open.
func (l *Log) indexSealed(s *segment) error {
	var err error
	spath := filepath.Join(l.dir, streamsName(s.base))
	sx, _ := openStreams(l.fs, spath, s.base, s.size) // nil: rebuild
	defer func() {
		if sx != nil && s.streams != sx {
			sx.f.Close()
		}
	}()
	if s.ix, err = l.checkSealedIndex(s); err != nil {
		return err
	}
	if s.ix != nil && sx != nil && sx.header.next == s.next {
		s.streams = sx
		return nil
	}
	rebuildIndex := s.ix == nil
	s.next, s.lastTS = 0, 0
	set := make(map[string]*liveStream)
	if err := l.scanSealed(s, 0, s.base, rebuildIndex, set); err != nil {
		return err
	}
	if rebuildIndex {
		if err := writeIndexFiles(l.fs, l.dir, s.base, s.index); err != nil {
			return fmt.Errorf("segment: rewrite index of %s: %w", s.path, err)
		}
		if s.ix, err = newFileIndex(l.fs, l.dir, s.base, int64(len(s.index))); err != nil {
			return fmt.Errorf("segment: reopen index of %s: %w", s.path, err)
		}
		s.index = nil
	}
	if sx == nil || sx.header.next != s.next {
		if err := writeFileAtomic(l.fs, spath, encodeStreams(s.base, s.next, s.size, set)); err != nil {
			return fmt.Errorf("segment: rewrite %s: %w", spath, err)
		}
		if sx != nil {
			sx.f.Close()
		}
		if sx, err = openStreams(l.fs, spath, s.base, s.size); err != nil {
			return fmt.Errorf("segment: reopen %s: %w", spath, err)
		}
	}
	s.streams = sx
	if err := l.fs.SyncDir(l.dir); err != nil {
		return fmt.Errorf("segment: fsync %s: %w", l.dir, err)
	}
	l.recovery.RebuiltIndexes = append(l.recovery.RebuiltIndexes, s.path)
	return nil
}

// checkSealedIndex opens a sealed segment's index files and checks them
// without reading them whole (openIndex), then verifies every batch after
// the last index entry, which sets the segment's end. It returns nil and
// no error when the index must be rebuilt: the files are missing or fail
// the checks, or the batches from the last entry on do not verify (the
// entry may be what is wrong; the rebuild's full scan tells a bad index
// from a bad log). The entries in between are checked when lookups read
// them, and by Verify.
func (l *Log) checkSealedIndex(s *segment) (*fileIndex, error) {
	x, first, last, err := openIndex(l.fs, l.dir, s.base, s.size)
	if err != nil {
		return nil, nil
	}
	s.firstTS = first.ts
	err = l.scanSealed(s, int64(last.pos), s.base+uint64(last.rel), false, nil)
	switch {
	case err == nil:
		return x, nil
	case errors.Is(err, ErrCorrupt):
		x.f.Close()
		return nil, nil
	default:
		x.f.Close()
		return nil, err
	}
}

// scanSealed verifies the batches of a sealed segment from pos to EOF and
// sets next and lastTS. Scanning from 0 it can also rebuild the sparse
// index (buildIndex) and collect the stream index into set (non-nil),
// which decodes every record. A bad or incomplete batch is corruption:
// sealed segments were fsynced before they were sealed, so they have no
// torn tail.
func (l *Log) scanSealed(s *segment, pos int64, expect uint64, buildIndex bool, set map[string]*liveStream) error {
	if buildIndex {
		s.index = nil
	}
	if pos == 0 {
		s.digest = 0
	}
	return walkBatches(s.f, s.path, pos, s.size, expect, set != nil, func(b walkedBatch) error {
		pos, h := b.Pos, b.Header
		if set != nil {
			addBatch(set, s.base, h, pos, b.Streams)
		}
		if pos == 0 || s.digestKnown {
			s.digest, s.digestKnown = crc32.Update(s.digest, castagnoli, b.Raw), true
		}
		if buildIndex && l.idx.want(s.index, pos) {
			s.index = append(s.index, indexEntry{rel: uint32(h.BaseOffset - s.base), pos: uint32(pos), ts: h.Timestamp})
		}
		if pos == 0 {
			s.firstTS = h.Timestamp
		}
		s.next, s.lastTS = h.NextOffset(), h.Timestamp
		l.mu.last, l.mu.hasLast = h, true
		return nil
	})
}

// scanError turns a scan failure into a CorruptionError, leaving I/O
// errors as they are.
func scanError(path string, pos int64, expect uint64, err error) error {
	var ce *CorruptionError
	switch {
	case errors.As(err, &ce):
		return err
	case errors.Is(err, record.ErrShort):
		return corruptf(path, pos, expect, "incomplete batch: %v", err)
	case errors.Is(err, record.ErrCorrupt):
		return corruptf(path, pos, expect, "%v", err)
	}
	return fmt.Errorf("segment: read %s at %d: %w", path, pos, err)
}

// openActive scans the active segment in full, verifying every CRC and
// record, and cuts it at the first batch that is torn or corrupt.
func (l *Log) openActive(s *segment) error {
	f, err := l.fs.OpenFile(s.path, os.O_RDWR|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("segment: open %s: %w", s.path, err)
	}
	s.f, s.next = f, s.base
	s.live = make(map[string]*liveStream)
	l.recovery.Path = s.path
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("segment: stat %s: %w", s.path, err)
	}
	fileSize := fi.Size()
	// Batches of an entry are held back until its last batch is seen, so
	// that an entry torn by a crash is dropped whole (Raft re-applies it).
	type held struct {
		pos     int64
		h       record.Header
		streams []batchStream
	}
	var pending []held
	var running uint32 // CRC-32C of the bytes walked so far
	lastTS, hasLast := l.mu.last.Timestamp, l.mu.hasLast
	err = walkBatches(f, s.path, 0, fileSize, s.base, true, func(b walkedBatch) error {
		h := b.Header
		if hasLast && h.Timestamp < lastTS {
			return corruptf(s.path, b.Pos, h.BaseOffset, "timestamp %d before previous %d", h.Timestamp, lastTS)
		}
		lastTS, hasLast = h.Timestamp, true
		running = crc32.Update(running, castagnoli, b.Raw)
		pending = append(pending, held{b.Pos, h, append([]batchStream(nil), b.Streams...)})
		if h.Continued() {
			return nil
		}
		for _, p := range pending {
			if l.idx.want(s.index, p.pos) {
				s.index = append(s.index, indexEntry{rel: uint32(p.h.BaseOffset - s.base), pos: uint32(p.pos), ts: p.h.Timestamp})
			}
			addBatch(s.live, s.base, p.h, p.pos, p.streams)
			if p.pos == 0 {
				s.firstTS = p.h.Timestamp
			}
			s.size, s.next, s.lastTS = p.pos+int64(p.h.Size()), p.h.NextOffset(), p.h.Timestamp
			l.mu.last, l.mu.hasLast = p.h, true
		}
		s.digest = running
		pending = pending[:0]
		return nil
	})
	var bad error
	var ce *CorruptionError
	switch {
	case errors.As(err, &ce):
		bad = err // a torn or corrupt batch: cut the segment before it
	case err != nil:
		return err
	}
	s.digestKnown = true
	if bad == nil && len(pending) > 0 {
		bad = fmt.Errorf("incomplete entry: raft index %d ends without its last batch", pending[0].h.RaftIndex)
	}
	if s.size == fileSize {
		return nil
	}
	if err := f.Truncate(s.size); err != nil {
		return fmt.Errorf("segment: truncate %s to %d: %w", s.path, s.size, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("segment: fsync %s: %w", s.path, err)
	}
	l.recovery.TruncatedAt, l.recovery.TruncatedBytes = s.size, fileSize-s.size
	l.recovery.Reason = bad.Error()
	return nil
}
