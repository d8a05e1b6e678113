package segment

import (
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/tsstore/tsstore/record"
)

// ErrNotSealed means a sealed segment was asked for by a base offset that
// names no segment, or names the active one.
var ErrNotSealed = errors.New("segment: no sealed segment at that base offset")

// replaceSuffix names the temporary .log of a replacement: <B>.log.replace.tmp
// (a *.tmp file, so Open removes a leftover one).
const replaceSuffix = ".replace" + TmpSuffix

// SegmentBase returns the base offset of the segment whose file the error
// names (.log, .index, .timeindex or .streams), so that a reader that hit
// corruption can ask for that segment to be repaired. An error naming a
// tiered object (Key) names no segment to repair.
func (e *CorruptionError) SegmentBase() (uint64, bool) {
	if e.Key != "" {
		// A tiered segment: every replica reads the same object, so no
		// peer has a copy to repair it with.
		return 0, false
	}
	name := filepath.Base(e.Path)
	if len(name) <= nameDigits {
		return 0, false
	}
	switch name[nameDigits:] {
	case LogSuffix, IndexSuffix, TimeIndexSuffix, StreamsSuffix:
	default:
		return 0, false
	}
	v, err := strconv.ParseUint(name[:nameDigits], 10, 64)
	return v, err == nil
}

// LogDamaged reports whether the error names a .log file: the segment's
// data, not one of its index files (which a rebuild from the local .log
// repairs).
func (e *CorruptionError) LogDamaged() bool { return strings.HasSuffix(e.Path, LogSuffix) }

// CorruptSegment returns the base offset of the segment a corruption error
// names, if err is or wraps a *CorruptionError naming one.
func CorruptSegment(err error) (uint64, bool) {
	var ce *CorruptionError
	if !errors.As(err, &ce) {
		return 0, false
	}
	return ce.SegmentBase()
}

// Damaged lists the sealed segments known to be damaged: those Open kept
// with Options.OpenDamaged and that were not replaced since.
func (l *Log) Damaged() []DamagedSegment {
	l.mu.RLock()
	defer l.mu.RUnlock()
	var out []DamagedSegment
	for _, s := range l.mu.segs {
		if s.damaged != nil {
			out = append(out, DamagedSegment{BaseOffset: s.base, Path: s.path, Err: s.damaged})
		}
	}
	return out
}

// sealed finds and acquires the sealed segment at base.
func (l *Log) sealed(base uint64) (*segment, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.mu.closed {
		return nil, ErrClosed
	}
	segs := l.mu.segs
	for _, s := range segs[:len(segs)-1] {
		if s.base == base {
			s.acquire()
			return s, nil
		}
	}
	return nil, fmt.Errorf("%w: %d (sealed segments end at %d)", ErrNotSealed, base, segs[len(segs)-1].base)
}

// sealedReadable is sealed, refusing a segment Open kept as damaged
// with its error (released). The caller releases what it returns.
func (l *Log) sealedReadable(base uint64) (*segment, error) {
	s, err := l.sealed(base)
	if err != nil {
		return nil, err
	}
	if s.damaged != nil {
		s.release()
		return nil, s.damaged
	}
	return s, nil
}

// VerifySegment checks one sealed segment as Verify does (every batch
// CRC and record, offsets, timestamps inside the segment, its .index,
// .timeindex and .streams files) and returns the first problem, a
// *CorruptionError for corruption. A segment Open kept as damaged
// returns its error.
func (l *Log) VerifySegment(base uint64) error {
	s, err := l.sealedReadable(base)
	if err != nil {
		return err
	}
	defer s.release()
	c := segment{digest: s.digest, digestKnown: s.digestKnown, base: s.base, path: s.path, f: s.f, size: s.size, next: s.next, ix: s.ix, streams: s.streams}
	if c.index, err = c.ix.load(l.fs, c.size, c.base); err != nil {
		return l.errClosedRead(err)
	}
	lastTS := int64(math.MinInt64)
	return l.withKey(l.errClosedRead(verifySegment(&c, &lastTS, func(int64) {})))
}

// SealedReader reads one sealed segment's .log file. It holds the file
// open: a ReplaceSealed meanwhile does not cut it off. Close it.
type SealedReader struct {
	s    *segment
	info SegmentInfo
}

// OpenSealed opens the .log of the sealed segment at base for reading,
// for instance to send it to a replica that repairs its copy. A segment
// kept as damaged is refused with its error.
func (l *Log) OpenSealed(base uint64) (*SealedReader, error) {
	s, err := l.sealedReadable(base)
	if err != nil {
		return nil, err
	}
	return &SealedReader{s: s, info: s.info()}, nil
}

// Info describes the segment.
func (r *SealedReader) Info() SegmentInfo { return r.info }

// ReadAt reads the .log file; it ends at the segment's size.
func (r *SealedReader) ReadAt(p []byte, off int64) (int, error) {
	if off >= r.info.Size {
		return 0, io.EOF
	}
	short := int64(len(p)) > r.info.Size-off
	if short {
		p = p[:r.info.Size-off]
	}
	n, err := r.s.f.ReadAt(p, off)
	if err == nil && short {
		err = io.EOF
	}
	return n, err
}

// Close releases the file.
func (r *SealedReader) Close() error {
	if r.s == nil {
		return nil
	}
	err := r.s.release()
	r.s = nil
	return err
}

// ReplaceSealed replaces the sealed segment at base with the .log bytes
// read from r (to EOF), typically another replica's copy of it: sealed
// segments are byte-identical on every replica. Nothing is published
// unless the new bytes check out:
//
//   - they are whole record batches whose CRCs verify and whose records
//     decode, at contiguous offsets from base to the segment's end offset
//     (the next segment's base), with timestamps that do not decrease and
//     fit between the neighbouring segments';
//   - they are exactly as many bytes as the segment's file, unless Open
//     kept the segment as damaged (then its size is not trusted).
//
// The index files (.index, .timeindex, .streams) are rebuilt from the new
// bytes, never taken from elsewhere. Publishing: the new .log is written
// to <B>.log.replace.tmp and fsynced and verified, the index files are
// published (each tmp, fsync, rename), then the .log is renamed over the
// old one and the directory fsynced. A crash at any point leaves the old
// .log or the new one, each whole; the index files describe either, as
// they are a function of bytes both copies agree on, and Open checks them
// and rebuilds any it doubts.
//
// Readers that hold the old segment keep reading its open files, which
// close when the last of them is done; readers that start after the swap
// read the new files. Appends are not held up. ReplaceSealed calls are
// serialized with each other.
func (l *Log) ReplaceSealed(base uint64, r io.Reader) error {
	l.repl.Lock()
	defer l.repl.Unlock()
	old, err := l.sealed(base)
	if err != nil {
		return err
	}
	defer old.release()
	if old.remote != nil {
		return fmt.Errorf("%w: replace %d", ErrTiered, base)
	}
	prevTS, nextTS := l.neighbourTimes(old)
	tmp := old.path + replaceSuffix
	ns, set, err := l.writeReplacement(old, tmp, func(f File) (int64, error) { return copyExact(f, r, old) }, prevTS, nextTS)
	if err == nil {
		var st stagedFiles
		if st, err = l.stageReplacement(ns, set); err == nil {
			err = l.publishReplacement(ns, tmp, st)
		}
		if err != nil {
			ns.closeFiles()
		}
	}
	if err != nil {
		_ = l.fs.Remove(tmp)
		return err
	}
	return l.swapSealed(old, ns)
}

// observeHold reports to Options.OnHold how long op held the lock
// appends take, from held until now.
func (l *Log) observeHold(op string, held time.Time) {
	if l.opts.OnHold != nil {
		l.opts.OnHold(op, time.Since(held))
	}
}

// swapSealed puts ns in old's place in the segment list and drops the
// Log's reference to old (readers may still hold theirs).
func (l *Log) swapSealed(old, ns *segment) error {
	l.mu.Lock()
	held := time.Now()
	i := 0
	for i < len(l.mu.segs) && l.mu.segs[i] != old {
		i++
	}
	if l.mu.closed || i == len(l.mu.segs) {
		l.mu.Unlock()
		ns.closeFiles()
		return ErrClosed
	}
	l.mu.segs[i] = ns
	l.mu.Unlock()
	l.observeHold("swap", held)
	return old.release() // the Log's reference; readers may still hold theirs
}

// neighbourTimes returns the last timestamp before s and the first after
// it, as far as the neighbours know them.
func (l *Log) neighbourTimes(s *segment) (prevTS, nextTS int64) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	prevTS, nextTS = math.MinInt64, math.MaxInt64
	for i, c := range l.mu.segs {
		if c != s {
			continue
		}
		if i > 0 && l.mu.segs[i-1].damaged == nil {
			prevTS = l.mu.segs[i-1].lastTS
		}
		if n := l.mu.segs[i+1]; n.damaged == nil && n.size > 0 {
			nextTS = n.firstTS
		}
	}
	return prevTS, nextTS
}

// writeReplacement writes tmp with fill, fsyncs and verifies it against
// old, and returns the new segment with its .log open (not published:
// publishReplacement does that) and its stream index entries.
func (l *Log) writeReplacement(old *segment, tmp string, fill func(File) (int64, error), prevTS, nextTS int64) (*segment, map[string]*liveStream, error) {
	f, err := l.fs.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, nil, fmt.Errorf("segment: create %s: %w", tmp, err)
	}
	size, err := fill(f)
	if err == nil {
		err = f.Sync()
	}
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("segment: replacing %s: %w", old.path, err)
	}
	ns := &segment{base: old.base, path: old.path, f: f, size: size, sealed: true}
	ns.refs.Store(1)
	set := make(map[string]*liveStream)
	lastTS := prevTS
	err = walkBatches(f, tmp, 0, size, old.base, true, func(b walkedBatch) error {
		pos, h := b.Pos, b.Header
		if h.Timestamp < lastTS {
			return corruptf(tmp, pos, h.BaseOffset, "timestamp %d before the previous batch's %d", h.Timestamp, lastTS)
		}
		ns.digest = crc32.Update(ns.digest, castagnoli, b.Raw)
		if l.idx.want(ns.index, pos) {
			ns.index = append(ns.index, indexEntry{rel: uint32(h.BaseOffset - ns.base), pos: uint32(pos), ts: h.Timestamp})
		}
		addBatch(set, ns.base, h, pos, b.Streams)
		if pos == 0 {
			ns.firstTS = h.Timestamp
		}
		ns.next, ns.lastTS, lastTS = h.NextOffset(), h.Timestamp, h.Timestamp
		return nil
	})
	ns.digestKnown = err == nil
	switch {
	case err == nil && ns.next != old.next:
		err = corruptf(tmp, size, ns.next, "the replacement ends at offset %d, the segment at %d", ns.next, old.next)
	case err == nil && ns.lastTS > nextTS:
		err = corruptf(tmp, size, ns.next, "last timestamp %d after the next segment's first, %d", ns.lastTS, nextTS)
	}
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("segment: refusing the replacement of %s: %w", old.path, err)
	}
	return ns, set, nil
}

// copyExact copies r to f up to EOF; the copy must be exactly old's size
// unless old is damaged. It returns the size copied.
func copyExact(f File, r io.Reader, old *segment) (int64, error) {
	limit := int64(MaxSegmentBytes) + record.MaxBatchSize
	if old.damaged == nil {
		limit = old.size
	}
	n, err := io.Copy(f, io.LimitReader(r, limit))
	if err != nil {
		return n, err
	}
	var one [1]byte
	switch _, err := io.ReadFull(r, one[:]); {
	case err == nil:
		return n, fmt.Errorf("the replacement is longer than %d bytes", limit)
	case err != io.EOF:
		return n, err
	}
	if old.damaged == nil && n != old.size {
		return n, fmt.Errorf("the replacement is %d bytes, the segment %d", n, old.size)
	}
	if n == 0 {
		return n, errors.New("the replacement is empty")
	}
	return n, nil
}

// stagedFiles are a replacement's index files (.index, .timeindex,
// .streams) written under temporary names and fsynced, not yet renamed.
type stagedFiles [][2]string // {tmp, final}

// stageReplacement writes the index files of a verified replacement under
// temporary names (*.tmp, which Open removes) and fsyncs them: the slow
// part of publishing, kept out of publishReplacement so that a caller
// holding a lock around the publish (ThinSealed's Gate) holds it across
// renames and one directory fsync only.
func (l *Log) stageReplacement(ns *segment, set map[string]*liveStream) (stagedFiles, error) {
	index, times := encodeIndex(ns.index)
	var st stagedFiles
	for _, f := range []struct {
		name string
		data []byte
	}{
		{indexName(ns.base), index},
		{timeIndexName(ns.base), times},
		{streamsName(ns.base), encodeStreams(ns.base, ns.next, ns.size, set)},
	} {
		final := filepath.Join(l.dir, f.name)
		tmp := final + TmpSuffix
		if err := writeFileSynced(l.fs, tmp, f.data); err != nil {
			st.remove(l.fs)
			return nil, fmt.Errorf("segment: write %s: %w", tmp, err)
		}
		st = append(st, [2]string{tmp, final})
	}
	return st, nil
}

// remove deletes the staged files that were not renamed.
func (st stagedFiles) remove(fsys FS) {
	for _, f := range st {
		_ = fsys.Remove(f[0])
	}
}

// publishReplacement publishes a verified replacement whose index files
// are staged: the index files are renamed into place, then the .log, then
// the directory is fsynced (the only fsync here); and opens the new index
// files.
func (l *Log) publishReplacement(ns *segment, tmp string, st stagedFiles) error {
	for i, f := range st {
		if err := l.fs.Rename(f[0], f[1]); err != nil {
			st[i:].remove(l.fs)
			return fmt.Errorf("segment: rename %s: %w", f[0], err)
		}
	}
	if err := l.fs.Rename(tmp, ns.path); err != nil {
		return fmt.Errorf("segment: rename %s: %w", tmp, err)
	}
	if err := l.fs.SyncDir(l.dir); err != nil {
		return fmt.Errorf("segment: fsync %s: %w", l.dir, err)
	}
	var err error
	if ns.ix, err = newFileIndex(l.fs, l.dir, ns.base, int64(len(ns.index))); err != nil {
		return fmt.Errorf("segment: reopen index of %s: %w", ns.path, err)
	}
	ns.index = nil
	spath := filepath.Join(l.dir, streamsName(ns.base))
	if ns.streams, err = openStreams(l.fs, spath, ns.base, ns.size); err != nil {
		return fmt.Errorf("segment: reopen %s: %w", spath, err)
	}
	return nil
}
