package segment

import (
	"bytes"
	"hash/crc32"
	"path/filepath"
	"slices"
)

// progressEvery is how many bytes Verify scans between progress calls.
const progressEvery = 4 << 20

// Verify scrubs the log: it re-reads every segment as of the call,
// verifies every CRC, decodes every record, and checks offsets,
// timestamps, segment contiguity, the sparse indexes (every entry of a
// sealed segment's .index and .timeindex files) and the stream
// indexes (a sealed segment's .streams file must equal, byte for byte, the
// file rebuilt from its log; the active segment's in-memory index must
// equal the one rebuilt from its bytes). It returns the
// first problem, a *CorruptionError for corruption. Without
// Options.Remote, the bytes of tiered segments are skipped. progress, if not nil,
// is called now and then with the bytes checked so far and the total.
func (l *Log) Verify(progress func(done, total int64)) (err error) {
	defer func() { err = l.withKey(err) }()
	l.mu.RLock()
	if l.mu.closed {
		l.mu.RUnlock()
		return ErrClosed
	}
	segs := make([]segment, len(l.mu.segs))
	var total int64
	for _, s := range l.mu.segs {
		s.acquire()
		defer s.release()
	}
	for i, s := range l.mu.segs {
		segs[i] = segment{digest: s.digest, digestKnown: s.digestKnown, damaged: s.damaged, base: s.base, path: s.path, f: s.f, size: s.size, next: s.next, index: s.index, ix: s.ix, streams: s.streams,
			remote: s.remote, lastTS: s.lastTS}
		if s.live != nil {
			// Entries are only appended to, so copying the slice headers
			// captures the index as of s.next.
			segs[i].live = make(map[string]*liveStream, len(s.live))
			for name, ls := range s.live {
				c := *ls
				segs[i].live[name] = &c
			}
		}
		total += s.size
	}
	l.mu.RUnlock()

	var done, reported int64
	report := func(force bool) {
		if progress != nil && (force || done-reported >= progressEvery) {
			progress(done, total)
			reported = done
		}
	}
	report(true)
	lastTS := int64(-1 << 63)
	for i := range segs {
		s := &segs[i]
		if i > 0 && s.base != segs[i-1].next {
			return corruptf(s.path, 0, segs[i-1].next, "segment starts at offset %d but %s ends at %d", s.base, segs[i-1].path, segs[i-1].next)
		}
		if s.damaged != nil {
			return s.damaged
		}
		if s.remote != nil && l.opts.Remote == nil {
			// Tiered, and no way to read the object here: `tsstore
			// verify --tiered` checks the objects.
			lastTS = s.lastTS
			continue
		}
		if s.ix != nil {
			// One sealed segment's index in memory at a time.
			entries, err := s.ix.load(l.fs, s.size, s.base)
			if err != nil {
				return l.errClosedRead(err)
			}
			s.index = entries
		}
		err := verifySegment(s, &lastTS, func(n int64) { done += n; report(false) })
		s.index = nil
		if err != nil {
			return l.errClosedRead(err)
		}
	}
	report(true)
	return nil
}

// verifySegment checks one segment; add is told the size of each batch.
func verifySegment(s *segment, lastTS *int64, add func(int64)) error {
	indexPath := filepath.Join(filepath.Dir(s.path), indexName(s.base))
	set := make(map[string]*liveStream)
	expect, k := s.base, 0
	var digest uint32
	err := walkBatches(s.f, s.path, 0, s.size, s.base, true, func(b walkedBatch) error {
		pos, h := b.Pos, b.Header
		if h.Timestamp < *lastTS {
			return corruptf(s.path, pos, expect, "timestamp %d before previous batch's %d", h.Timestamp, *lastTS)
		}
		if k < len(s.index) && int64(s.index[k].pos) <= pos {
			e := s.index[k]
			if int64(e.pos) != pos || s.base+uint64(e.rel) != h.BaseOffset || e.ts != h.Timestamp {
				return corruptf(indexPath, int64(k)*IndexEntrySize, s.base+uint64(e.rel),
					"index entry %d (offset %d, position %d, timestamp %d) does not match batch at position %d (offset %d, timestamp %d)",
					k, s.base+uint64(e.rel), e.pos, e.ts, pos, h.BaseOffset, h.Timestamp)
			}
			k++
		}
		addBatch(set, s.base, h, pos, b.Streams)
		digest = crc32.Update(digest, castagnoli, b.Raw)
		*lastTS = h.Timestamp
		expect = h.NextOffset()
		add(int64(len(b.Raw)))
		return nil
	})
	if err != nil {
		return err
	}
	if k < len(s.index) {
		return corruptf(indexPath, int64(k)*IndexEntrySize, s.base+uint64(s.index[k].rel),
			"index entry %d points at position %d, past the last batch", k, s.index[k].pos)
	}
	if expect != s.next {
		return corruptf(s.path, s.size, s.next, "segment ends at offset %d, want %d", expect, s.next)
	}
	if s.digestKnown && digest != s.digest {
		return corruptf(s.path, 0, s.base, "digest %08x, %08x when it was written or last read whole", digest, s.digest)
	}
	return verifyStreams(s, set)
}

// verifyStreams compares a segment's stream index with set, rebuilt from
// its log.
func verifyStreams(s *segment, set map[string]*liveStream) error {
	if s.streams == nil {
		for name, ls := range set {
			got := s.live[name]
			if got == nil || !slices.Equal(got.entries, ls.entries) || got.maxVer != ls.maxVer || got.unordered != ls.unordered {
				return corruptf(s.path, 0, s.base, "in-memory stream index of %q does not match the log", name)
			}
		}
		if len(s.live) != len(set) {
			return corruptf(s.path, 0, s.base, "in-memory stream index has %d streams, the log %d", len(s.live), len(set))
		}
		return nil
	}
	data, err := s.streams.readAll()
	if err != nil {
		return err
	}
	if _, err := decodeStreamsFile(data); err != nil {
		return corruptf(s.streams.path, 0, s.base, "%v", err)
	}
	want := encodeStreams(s.base, s.next, s.size, set)
	if !bytes.Equal(data, want) {
		at := 0
		for at < min(len(data), len(want)) && data[at] == want[at] {
			at++
		}
		return corruptf(s.streams.path, int64(at), s.base, "differs from the index rebuilt from %s (%d bytes, want %d)", s.path, len(data), len(want))
	}
	return nil
}
