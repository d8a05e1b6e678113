package segment

import (
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"path/filepath"
	"time"
)

// ErrNotOldest means DropSealed was asked to drop a sealed segment that is
// not the oldest: the log must stay contiguous, so it only loses a prefix.
var ErrNotOldest = errors.New("segment: only the oldest sealed segment can be dropped")

// DropSealed removes the oldest segment, which must be sealed and start
// at base, from the log: readers that start after the call get an
// *OffsetCompactedError below its end; readers that hold it (a read in
// progress, a SealedReader) keep preading its open files, which close
// when the last of them is done. Its files are unlinked (a tiered
// segment's marker first, then the index files, then the .log, then one
// directory fsync), so a crash leaves the segment whole, with or without
// index files (Open rebuilds them), or gone (a tiered segment's index
// files may stay behind, unread); a caller that decided the drop (the FSM, through Raft) repeats it
// after a restart. Hard links elsewhere (snapshots) keep their bytes.
// DropSealed is serialized with ReplaceSealed; appends wait only for the
// removal from the segment list, not for the unlinks or a read.
func (l *Log) DropSealed(base uint64) (SegmentInfo, error) {
	l.repl.Lock()
	defer l.repl.Unlock()
	// The writer reads l.mu.segs without l.mu (it is the only other one
	// that changes the slice): hold it off for the swap only.
	l.w.Lock()
	held := time.Now()
	l.mu.Lock()
	segs := l.mu.segs
	switch {
	case l.mu.closed:
		l.mu.Unlock()
		l.w.Unlock()
		return SegmentInfo{}, ErrClosed
	case len(segs) < 2 || segs[0].base != base:
		l.mu.Unlock()
		l.w.Unlock()
		if s, err := l.sealed(base); err == nil {
			s.release()
			return SegmentInfo{}, fmt.Errorf("%w: %d (the oldest starts at %d)", ErrNotOldest, base, segs[0].base)
		}
		return SegmentInfo{}, fmt.Errorf("%w: %d (sealed segments are [%d, %d))", ErrNotSealed, base, segs[0].base, segs[len(segs)-1].base)
	}
	old := segs[0]
	info := old.info()
	l.mu.segs = segs[1:]
	l.mu.Unlock()
	l.w.Unlock()
	l.observeHold("drop", held)
	// The Log's reference; readers may still hold theirs.
	cerr := old.release()
	for _, name := range []string{tieredName(base), streamsName(base), timeIndexName(base), indexName(base), FileName(base)} {
		p := filepath.Join(l.dir, name)
		if err := l.fs.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return info, fmt.Errorf("segment: drop %s: %w", p, err)
		}
	}
	if err := l.fs.SyncDir(l.dir); err != nil {
		return info, fmt.Errorf("segment: fsync %s: %w", l.dir, err)
	}
	return info, cerr
}

// DropSealedBefore drops, oldest first, every sealed segment that ends at
// or before cut (NextOffset <= cut) and returns what it dropped. The
// active segment is never dropped. It is idempotent: segments already
// gone are not looked for.
func (l *Log) DropSealedBefore(cut uint64) ([]SegmentInfo, error) {
	var out []SegmentInfo
	for {
		l.mu.RLock()
		segs, closed := l.mu.segs, l.mu.closed
		var base uint64
		ok := !closed && len(segs) > 1 && segs[0].next <= cut
		if ok {
			base = segs[0].base
		}
		l.mu.RUnlock()
		if closed {
			return out, ErrClosed
		}
		if !ok {
			return out, nil
		}
		info, err := l.DropSealed(base)
		if err != nil {
			return out, err
		}
		out = append(out, info)
	}
}

// Digest returns the CRC-32C of the sealed segment at base's .log bytes,
// the value replicas compare (their sealed segments are byte-identical).
// It reads the file unless the digest is known (computed on the write
// path, by a full walk at Open or by an earlier call); fresh reads the
// file even then, which is what a scrub wants: a known digest was taken
// when the bytes were written and does not see later bit rot.
func (l *Log) Digest(base uint64, fresh bool) (uint32, error) {
	s, err := l.sealedReadable(base)
	if err != nil {
		return 0, err
	}
	defer s.release()
	l.mu.RLock()
	d, known := s.digest, s.digestKnown
	l.mu.RUnlock()
	if known && !fresh {
		return d, nil
	}
	h := crc32.New(castagnoli)
	n, err := io.Copy(h, io.NewSectionReader(s.f, 0, s.size))
	if err != nil {
		return 0, l.withKey(l.errClosedRead(fmt.Errorf("segment: read %s: %w", s.path, err)))
	}
	if n != s.size {
		return 0, corruptf(s.path, n, s.base, "read %d of %d bytes", n, s.size)
	}
	sum := h.Sum32()
	if !known {
		l.mu.Lock()
		s.digest, s.digestKnown = sum, true
		l.mu.Unlock()
	}
	return sum, nil
}

// SegmentStreams returns the names of the streams with records in the
// sealed segment at base, sorted, from its .streams directory (held in
// memory): what a retention policy needs to know whether the whole
// segment may go.
func (l *Log) SegmentStreams(base uint64) ([]string, error) {
	s, err := l.sealedReadable(base)
	if err != nil {
		return nil, err
	}
	defer s.release()
	out := make([]string, len(s.streams.dirs))
	for i, d := range s.streams.dirs {
		out[i] = d.name
	}
	return out, nil
}
