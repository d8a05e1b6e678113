package segment

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
)

// indexWindow is how many entries a lookup in a sealed segment's index
// files reads with one pread once bisection has narrowed the range to it:
// 4 KiB of .index. Wider ranges are narrowed one 8- or 12-byte probe at a
// time, so a lookup in a segment of n entries costs about
// log2(n/indexWindow) + 1 preads, served from the page cache when hot.
const indexWindow = 512

// guessWindow is how many entries a lookup first reads around its
// interpolated guess: 512 bytes of .index, enough when batches are of
// similar size.
const guessWindow = 64

// windowPool holds lookup buffers, so that lookups do not allocate.
var windowPool = sync.Pool{New: func() any { return new([(indexWindow + 2) * TimeIndexEntrySize]byte) }}

// fileIndex is a sealed segment's sparse index, left in its files. The
// .index file stays open and lookups bisect it with pread; OffsetForTime
// opens the .timeindex file for the length of a lookup. Open checks only
// the sizes and the first and last entries (openIndex); a lookup checks
// the entries it reads, and Verify checks every entry.
type fileIndex struct {
	f     File   // the .index file, read-only
	path  string // the .index file
	tpath string // the .timeindex file
	n     int64  // entries in each file
}

func newFileIndex(fsys FS, dir string, base uint64, n int64) (*fileIndex, error) {
	path := filepath.Join(dir, indexName(base))
	f, err := fsys.OpenFile(path, os.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	return &fileIndex{f: f, path: path, tpath: filepath.Join(dir, timeIndexName(base)), n: n}, nil
}

// openIndex opens a sealed segment's index files and checks what is cheap
// to check: both sizes, and the first and last entry of each, which it
// returns. Any error means the files must be rebuilt.
func openIndex(fsys FS, dir string, base uint64, logSize int64) (x *fileIndex, first, last indexEntry, err error) {
	ix, err := newFileIndex(fsys, dir, base, 0)
	if err != nil {
		return nil, first, last, err
	}
	defer func() {
		if err != nil {
			ix.f.Close()
		}
	}()
	fi, err := ix.f.Stat()
	if err != nil {
		return nil, first, last, err
	}
	if fi.Size() == 0 || fi.Size()%IndexEntrySize != 0 {
		return nil, first, last, fmt.Errorf("index size %d is not a positive multiple of %d", fi.Size(), IndexEntrySize)
	}
	ix.n = fi.Size() / IndexEntrySize
	tf, err := fsys.OpenFile(ix.tpath, os.O_RDONLY, 0)
	if err != nil {
		return nil, first, last, err
	}
	defer tf.Close()
	tfi, err := tf.Stat()
	if err != nil {
		return nil, first, last, err
	}
	if tfi.Size() != ix.n*TimeIndexEntrySize {
		return nil, first, last, fmt.Errorf("time index size %d, want %d for %d entries", tfi.Size(), ix.n*TimeIndexEntrySize, ix.n)
	}
	var b [2 * (IndexEntrySize + TimeIndexEntrySize)]byte
	ix0, ixn, tx0, txn := b[0:8], b[8:16], b[16:28], b[28:40]
	for _, r := range []struct {
		f   File
		b   []byte
		pos int64
	}{{ix.f, ix0, 0}, {ix.f, ixn, (ix.n - 1) * IndexEntrySize}, {tf, tx0, 0}, {tf, txn, (ix.n - 1) * TimeIndexEntrySize}} {
		if _, err := r.f.ReadAt(r.b, r.pos); err != nil {
			return nil, first, last, err
		}
	}
	first = decodeIndexEntry(ix0, tx0)
	last = decodeIndexEntry(ixn, txn)
	switch {
	case first.rel != 0 || first.pos != 0 || binary.BigEndian.Uint32(tx0[8:]) != 0:
		return nil, first, last, fmt.Errorf("entry 0 is (%d, %d), want (0, 0)", first.rel, first.pos)
	case binary.BigEndian.Uint32(txn[8:]) != last.rel:
		return nil, first, last, fmt.Errorf("last entry: time index offset %d, index offset %d", binary.BigEndian.Uint32(txn[8:]), last.rel)
	case int64(last.pos) >= logSize:
		return nil, first, last, fmt.Errorf("last entry: position %d past end of log (%d bytes)", last.pos, logSize)
	case ix.n > 1 && (last.rel == 0 || last.pos == 0 || last.ts < first.ts):
		return nil, first, last, fmt.Errorf("last entry not after entry 0")
	}
	return ix, first, last, nil
}

// decodeIndexEntry decodes an entry from its .index bytes and the
// timestamp of its .timeindex bytes (nil: no timestamp).
func decodeIndexEntry(ix, tx []byte) indexEntry {
	e := indexEntry{rel: binary.BigEndian.Uint32(ix), pos: binary.BigEndian.Uint32(ix[4:])}
	if tx != nil {
		e.ts = int64(binary.BigEndian.Uint64(tx))
	}
	return e
}

// find returns the last entry whose relative offset is <= rel, its number
// k, and the position of the entry after it (logSize if there is none).
// span is the segment's offsets (NextOffset - base), for the first guess.
// The entries it reads must be in order, inside the log, and entry 0 must
// be (0, 0); otherwise the error is a *CorruptionError naming the .index
// file. base is the segment's base offset, for errors.
func (x *fileIndex) find(rel, span uint64, logSize int64, base uint64) (e indexEntry, k int64, nextPos int64, err error) {
	buf := windowPool.Get().(*[(indexWindow + 2) * TimeIndexEntrySize]byte)
	defer windowPool.Put(buf)
	above := func(b []byte) bool { return uint64(binary.BigEndian.Uint32(b)) > rel }
	wlo, w, err := bisect(x.f, x.path, IndexEntrySize, x.n, buf[:], base, above, interpolate(float64(rel), 0, float64(span), x.n))
	if err != nil {
		return e, 0, 0, err
	}
	var prev indexEntry
	for i := 0; i < len(w); i += IndexEntrySize {
		cur, k := decodeIndexEntry(w[i:], nil), wlo+int64(i/IndexEntrySize)
		switch {
		case int64(cur.pos) >= logSize:
			return e, 0, 0, corruptf(x.path, k*IndexEntrySize, base+uint64(cur.rel), "entry %d: position %d past the end of the log (%d bytes)", k, cur.pos, logSize)
		case k == 0 && (cur.rel != 0 || cur.pos != 0):
			return e, 0, 0, corruptf(x.path, 0, base, "entry 0 is (%d, %d), want (0, 0)", cur.rel, cur.pos)
		case i > 0 && (cur.rel <= prev.rel || cur.pos <= prev.pos):
			return e, 0, 0, corruptf(x.path, k*IndexEntrySize, base+uint64(cur.rel), "entry %d (%d, %d) not after entry %d (%d, %d)", k, cur.rel, cur.pos, k-1, prev.rel, prev.pos)
		}
		prev = cur
	}
	i := searchWindow(w, IndexEntrySize, above) - 1
	if i < 0 {
		return e, 0, 0, corruptf(x.path, wlo*IndexEntrySize, base+rel, "no entry at or before offset %d", base+rel)
	}
	e, k, nextPos = decodeIndexEntry(w[i*IndexEntrySize:], nil), wlo+int64(i), logSize
	if (i+1)*IndexEntrySize < len(w) {
		nextPos = int64(binary.BigEndian.Uint32(w[(i+1)*IndexEntrySize+4:]))
	}
	return e, k, nextPos, nil
}

// findTime returns the last entry whose timestamp is below ts, or entry 0
// if there is none. It reads the .timeindex file, then the entry's
// position from the .index file. The time-index entries it reads must be
// in order and the two files must agree on the entry; otherwise it
// returns an error. The entry's timestamp is as the file says: the caller
// checks it against the batch. firstTS and lastTS are the segment's, for
// the first guess.
func (x *fileIndex) findTime(fsys FS, ts, firstTS, lastTS int64, base uint64) (e indexEntry, err error) {
	tf, err := fsys.OpenFile(x.tpath, os.O_RDONLY, 0)
	if err != nil {
		return e, err
	}
	defer tf.Close()
	buf := windowPool.Get().(*[(indexWindow + 2) * TimeIndexEntrySize]byte)
	defer windowPool.Put(buf)
	above := func(b []byte) bool { return int64(binary.BigEndian.Uint64(b)) >= ts }
	guess := interpolate(float64(ts), float64(firstTS), float64(lastTS), x.n)
	wlo, w, err := bisect(tf, x.tpath, TimeIndexEntrySize, x.n, buf[:], base, above, guess)
	if err != nil {
		return e, err
	}
	for i := TimeIndexEntrySize; i < len(w); i += TimeIndexEntrySize {
		if binary.BigEndian.Uint64(w[i:]) < binary.BigEndian.Uint64(w[i-TimeIndexEntrySize:]) ||
			binary.BigEndian.Uint32(w[i+8:]) <= binary.BigEndian.Uint32(w[i-TimeIndexEntrySize+8:]) {
			return e, corruptf(x.tpath, wlo*TimeIndexEntrySize+int64(i), base, "entry not after the one before")
		}
	}
	i := searchWindow(w, TimeIndexEntrySize, above) - 1
	if i < 0 && wlo > 0 {
		// bisect read entry wlo as below ts: the file changed.
		return e, corruptf(x.tpath, wlo*TimeIndexEntrySize, base, "entry %d: timestamp no longer below %d", wlo, ts)
	}
	i = max(i, 0) // entry 0 is at or after ts: the segment's first batch
	k := wlo + int64(i)
	t := w[i*TimeIndexEntrySize:]
	var ib [IndexEntrySize]byte
	if err := readFull(x.f, x.path, ib[:], k*IndexEntrySize, base); err != nil {
		return e, err
	}
	e = decodeIndexEntry(ib[:], t)
	if e.rel != binary.BigEndian.Uint32(t[8:]) || (k == 0 && (e.rel != 0 || e.pos != 0)) {
		return e, corruptf(x.path, k*IndexEntrySize, base+uint64(e.rel), "entry %d: index and time index disagree", k)
	}
	return e, nil
}

// bisect narrows the n entries of size bytes in f to a window around the
// first entry for which above holds (above must go from false to true
// along the file), and reads the window into buf. It returns the number
// of the window's first entry and its bytes. The window holds the entry
// before the first one above (unless that is entry 0) and the first one
// above (unless there is none).
//
// It first reads guessWindow entries around guess, the caller's estimate
// of the answer's entry (interpolated from offsets or timestamps), which
// is enough when the guess is good; otherwise it probes single entries
// while the range is wider than indexWindow, then reads the range.
func bisect(f File, path string, size int, n int64, buf []byte, base uint64, above func([]byte) bool, guess int64) (wlo int64, w []byte, err error) {
	lo, hi := int64(0), n // the first entry above is in [lo, hi]
	if n > guessWindow {
		wlo = min(max(guess-guessWindow/2, 0), n-guessWindow)
		w = buf[:guessWindow*size]
		if err := readFull(f, path, w, wlo*int64(size), base); err != nil {
			return 0, nil, err
		}
		switch i := searchWindow(w, size, above); {
		case (i > 0 || wlo == 0) && (i < guessWindow || wlo+guessWindow == n):
			return wlo, w, nil
		case i == 0:
			hi = wlo
		default:
			lo = wlo + guessWindow
		}
	}
	for hi-lo > indexWindow {
		mid := lo + (hi-lo)/2
		if err := readFull(f, path, buf[:size], mid*int64(size), base); err != nil {
			return 0, nil, err
		}
		if above(buf[:size]) {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	wlo, whi := max(lo-1, 0), min(hi+1, n)
	w = buf[:(whi-wlo)*int64(size)]
	if err := readFull(f, path, w, wlo*int64(size), base); err != nil {
		return 0, nil, err
	}
	return wlo, w, nil
}

// interpolate estimates the entry, of n, at which x falls in [lo, hi].
func interpolate(x, lo, hi float64, n int64) int64 {
	if x <= lo || hi <= lo {
		return 0
	}
	return int64(min((x-lo)/(hi-lo), 1) * float64(n))
}

// searchWindow returns the number of the first entry of w for which above
// holds, or the number of entries if none does.
func searchWindow(w []byte, size int, above func([]byte) bool) int {
	lo, hi := 0, len(w)/size
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if above(w[mid*size:]) {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo
}

// readFull reads exactly len(b) bytes of an index file at pos. A file
// shorter than Open found it is corruption.
func readFull(f File, path string, b []byte, pos int64, base uint64) error {
	m, err := f.ReadAt(b, pos)
	if m == len(b) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		return corruptf(path, pos, base, "file ends inside the entry at %d", pos)
	}
	return fmt.Errorf("segment: read %s at %d: %w", path, pos, err)
}

// load reads and checks every entry of both files, for Verify. A file
// that is missing, short or fails the checks is a *CorruptionError.
func (x *fileIndex) load(fsys FS, logSize int64, base uint64) ([]indexEntry, error) {
	index := make([]byte, x.n*IndexEntrySize)
	if err := readFull(x.f, x.path, index, 0, base); err != nil {
		return nil, err
	}
	times, err := readWhole(fsys, x.tpath, 0)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, corruptf(x.tpath, 0, base, "missing")
	case err != nil:
		return nil, fmt.Errorf("segment: read %s: %w", x.tpath, err)
	}
	entries, err := decodeIndex(index, times, logSize)
	if err != nil {
		return nil, corruptf(x.path, 0, base, "%v", err)
	}
	return entries, nil
}
