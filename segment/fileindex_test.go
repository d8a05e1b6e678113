package segment

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"unsafe"

	"github.com/tsstore/tsstore/record"
)

// indexMemory returns the bytes of sparse index entries held in memory by
// sealed segments and by the active one.
func indexMemory(l *Log) (sealed, active int64) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	for _, s := range l.mu.segs {
		n := int64(cap(s.index)) * int64(unsafe.Sizeof(indexEntry{}))
		if s.sealed {
			sealed += n
		} else {
			active += n
		}
	}
	return sealed, active
}

// indexReadFS counts the bytes read with ReadAt from .index and
// .timeindex files.
type indexReadFS struct {
	FS
	index, timeIndex atomic.Int64
}

func (c *indexReadFS) OpenFile(name string, flag int, perm fs.FileMode) (File, error) {
	f, err := c.FS.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	switch {
	case strings.HasSuffix(name, IndexSuffix):
		return countingFile{File: f, n: &c.index}, nil
	case strings.HasSuffix(name, TimeIndexSuffix):
		return countingFile{File: f, n: &c.timeIndex}, nil
	}
	return f, nil
}

// bigIndexOptions give sealed segments an entry per batch and, with
// fileIndexLog's batches, more entries than indexWindow, so that lookups
// bisect with single-entry probes before reading a window.
func bigIndexOptions() Options {
	o := DefaultOptions()
	o.SegmentBytes = 256 << 10
	o.IndexIntervalBytes = 1
	return o
}

// fileIndexLog writes ~80-byte batches of one record until the log has
// sealed segments, closes it and returns the batches.
func fileIndexLog(t *testing.T, dir string, sealed int) []record.Batch {
	t.Helper()
	l := mustOpen(t, dir, bigIndexOptions())
	m := newMaker(8)
	var bs []record.Batch
	for len(l.Segments()) <= sealed {
		bs = append(bs, fill(t, l, m, 500, 1)...)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return bs
}

// batchAt returns the batch of bs that holds offset off.
func batchAt(bs []record.Batch, off uint64) record.Batch {
	for _, b := range bs {
		if h := b.Header(); off >= h.BaseOffset && off < h.NextOffset() {
			return b
		}
	}
	return nil
}

// TestSealedIndexLookupFromFile reopens a log and reads every batch of its
// sealed segments by offset and by time: the lookups must read the .index
// and .timeindex files, and find the right batches.
func TestSealedIndexLookupFromFile(t *testing.T) {
	dir := t.TempDir()
	bs := fileIndexLog(t, dir, 2)
	o := bigIndexOptions()
	cfs := &indexReadFS{FS: OSFS{}}
	o.FS = cfs
	l := mustOpen(t, dir, o)
	segs := l.Segments()
	if n := segs[0].NextOffset - segs[0].BaseOffset; n <= 2*indexWindow {
		t.Fatalf("segment 0 has %d batches; want more than %d so that lookups probe", n, 2*indexWindow)
	}
	if sealed, _ := indexMemory(l); sealed != 0 {
		t.Fatalf("sealed segments hold %d bytes of index in memory", sealed)
	}
	cfs.index.Store(0)
	end := segs[len(segs)-1].BaseOffset
	for i, b := range bs {
		h := b.Header()
		if h.BaseOffset >= end {
			break
		}
		out, next, err := l.ReadBatches(nil, h.BaseOffset, 1)
		if err != nil || !bytes.Equal(out, b) || next != h.NextOffset() {
			t.Fatalf("ReadBatches(%d) = %d bytes, next %d, %v; want batch %d", h.BaseOffset, len(out), next, err, i)
		}
		if got := l.OffsetForTime(h.Timestamp); got != h.BaseOffset {
			t.Fatalf("OffsetForTime(%d) = %d, want %d", h.Timestamp, got, h.BaseOffset)
		}
		if got := l.OffsetForTime(h.Timestamp - 1); got != h.BaseOffset {
			t.Fatalf("OffsetForTime(%d) = %d, want %d", h.Timestamp-1, got, h.BaseOffset)
		}
	}
	if cfs.index.Load() == 0 || cfs.timeIndex.Load() == 0 {
		t.Fatalf("lookups read %d bytes of .index, %d of .timeindex; want the files used", cfs.index.Load(), cfs.timeIndex.Load())
	}
	if err := l.Verify(nil); err != nil {
		t.Fatal(err)
	}
}

// TestOpenDoesNotLoadSealedIndexes opens a log of many sealed segments:
// Open must read only a few entries of each index file, and no sealed
// segment may hold its index in memory, also after more segments are
// sealed by appends.
func TestOpenDoesNotLoadSealedIndexes(t *testing.T) {
	dir := t.TempDir()
	o := testOptions()
	o.IndexIntervalBytes = 64
	l := mustOpen(t, dir, o)
	m := newMaker(120)
	for len(l.Segments()) <= 40 {
		fill(t, l, m, 10, 3)
	}
	if sealed, active := indexMemory(l); sealed != 0 || active == 0 {
		t.Fatalf("before reopen: %d bytes of sealed index in memory, %d active", sealed, active)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	var indexBytes int64
	ms, _ := filepath.Glob(filepath.Join(dir, "*"+IndexSuffix))
	for _, p := range ms {
		fi, _ := os.Stat(p)
		indexBytes += fi.Size()
	}

	cfs := &indexReadFS{FS: OSFS{}}
	o.FS = cfs
	l = mustOpen(t, dir, o)
	segs := l.Segments()
	sealedSegs := int64(len(segs) - 1)
	// Open reads entry 0 and the last entry of each file of a sealed
	// segment: 2*8 + 2*12 bytes.
	if got, want := cfs.index.Load()+cfs.timeIndex.Load(), sealedSegs*2*(IndexEntrySize+TimeIndexEntrySize); got > want {
		t.Fatalf("Open read %d bytes of index files (%d bytes of .index in %d sealed segments); want at most %d", got, indexBytes, sealedSegs, want)
	}
	if sealed, _ := indexMemory(l); sealed != 0 {
		t.Fatalf("after Open: %d bytes of sealed index in memory", sealed)
	}
	for range 3 {
		fill(t, l, m, 40, 3)
	}
	if n := len(l.Segments()); n <= len(segs) {
		t.Fatalf("no segment was sealed by appends (%d segments)", n)
	}
	if sealed, _ := indexMemory(l); sealed != 0 {
		t.Fatalf("after sealing by Append: %d bytes of sealed index in memory", sealed)
	}
	if err := l.Verify(nil); err != nil {
		t.Fatal(err)
	}
}

// checkRead reads one batch at off: the answer must be the batch that
// holds off or a *CorruptionError, never another batch.
func checkRead(t *testing.T, l *Log, bs []record.Batch, off uint64) (corrupt *CorruptionError) {
	t.Helper()
	out, next, err := l.ReadBatches(nil, off, 1)
	if err != nil {
		if !errors.As(err, &corrupt) {
			t.Fatalf("ReadBatches(%d): %v is not a CorruptionError", off, err)
		}
		return corrupt
	}
	want := batchAt(bs, off)
	if !bytes.Equal(out, want) || next != want.Header().NextOffset() {
		t.Fatalf("ReadBatches(%d) = %d bytes up to %d; want the batch at %d", off, len(out), next, want.Header().BaseOffset)
	}
	return nil
}

// TestSealedIndexCorruptAfterOpen damages one entry in the middle of a
// sealed segment's .index file, where Open does not look. Open succeeds;
// every read in the segment returns the right batch or a
// *CorruptionError, never a wrong batch; Verify names the .index file; and
// deleting the file and reopening rebuilds it.
func TestSealedIndexCorruptAfterOpen(t *testing.T) {
	dir := t.TempDir()
	bs := fileIndexLog(t, dir, 1)
	ix := filepath.Join(dir, indexName(0))
	good, _ := os.ReadFile(ix)
	n := len(good) / IndexEntrySize
	var damages []func([]byte)
	for _, k := range []int{1, indexWindow, n / 2, n - 2} { // n/2: every lookup's first probe
		// With one entry per batch, entry k is batch k.
		for _, b := range []int{0, 3, 4, 7} { // high and low bytes of the offset and the position
			for _, bit := range []byte{0x01, 0x80} {
				damages = append(damages, func(d []byte) { d[k*IndexEntrySize+b] ^= bit })
			}
		}
	}
	damages = append(damages, func(d []byte) { copy(d[IndexEntrySize:], []byte{0xff, 0xff, 0, 0}) }) // entry 1 out of order
	var errs int
	for i, damage := range damages {
		data := bytes.Clone(good)
		damage(data)
		if err := os.WriteFile(ix, data, 0o644); err != nil {
			t.Fatal(err)
		}
		l, err := Open(dir, bigIndexOptions())
		if err != nil {
			t.Fatalf("damage %d: Open: %v", i, err)
		}
		if r := l.Recovery(); len(r.RebuiltIndexes) != 0 {
			t.Fatalf("damage %d: Open rebuilt %v; it should not read the middle of the file", i, r.RebuiltIndexes)
		}
		// One record per batch: offset j is batch j. Read around every
		// damaged entry, and across the segment for a damaged probe.
		end := l.Segments()[0].NextOffset
		for off := uint64(0); off < end; off++ {
			if off%37 == 0 || nearDamage(off, n) {
				if ce := checkRead(t, l, bs, off); ce != nil && ce.Path == ix {
					errs++
				}
			}
		}
		var ce *CorruptionError
		if i%4 == 0 {
			if err := l.Verify(nil); !errors.As(err, &ce) || ce.Path != ix {
				t.Fatalf("damage %d: Verify = %v, want corruption of %s", i, err, ix)
			}
		}
		l.Close()
	}
	if errs == 0 {
		t.Fatalf("no read named the damaged index %s", ix)
	}

	os.Remove(ix)
	l := mustOpen(t, dir, bigIndexOptions())
	if got, _ := os.ReadFile(ix); !bytes.Equal(got, good) || len(l.Recovery().RebuiltIndexes) != 1 {
		t.Fatalf("index not rebuilt: recovery %+v", l.Recovery())
	}
	if err := l.Verify(nil); err != nil {
		t.Fatal(err)
	}
}

// nearDamage reports whether offset off is within 3 batches of an entry
// TestSealedIndexCorruptAfterOpen damages (in a segment of n entries).
func nearDamage(off uint64, n int) bool {
	for _, k := range []uint64{1, indexWindow, uint64(n) / 2, uint64(n) - 2} {
		if off+3 >= k && off <= k+3 {
			return true
		}
	}
	return false
}

// TestSealedTimeIndexCorruptAfterOpen damages entries in the middle of a
// sealed segment's .timeindex file: OffsetForTime must still return the
// right offsets (it checks the entry against the batch and falls back to
// a scan), and Verify must report the damage.
func TestSealedTimeIndexCorruptAfterOpen(t *testing.T) {
	dir := t.TempDir()
	bs := fileIndexLog(t, dir, 1)
	tx := filepath.Join(dir, timeIndexName(0))
	good, _ := os.ReadFile(tx)
	n := len(good) / TimeIndexEntrySize
	for _, k := range []int{1, n / 2, n - 2} {
		for _, b := range []int{0, 6, 7, 11} { // timestamp high and low bytes, relative offset
			data := bytes.Clone(good)
			data[k*TimeIndexEntrySize+b] ^= 0x04
			if err := os.WriteFile(tx, data, 0o644); err != nil {
				t.Fatal(err)
			}
			l, err := Open(dir, bigIndexOptions())
			if err != nil {
				t.Fatalf("entry %d byte %d: Open: %v", k, b, err)
			}
			end := l.Segments()[0].NextOffset
			for j := max(k-3, 0); j < len(bs) && bs[j].Header().BaseOffset < end; j += max(1, (j-k)*(j-k)) {
				h := bs[j].Header()
				if got := l.OffsetForTime(h.Timestamp - 1); got != h.BaseOffset {
					t.Fatalf("entry %d byte %d: OffsetForTime(ts of batch %d) = %d, want %d", k, b, j, got, h.BaseOffset)
				}
			}
			if err := l.Verify(nil); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("entry %d byte %d: Verify = %v, want corruption", k, b, err)
			}
			l.Close()
		}
	}
}

// TestSealedIndexLookupSkewed reads a sealed segment whose batches and
// timestamps are far from uniform (small batches, then large ones, with a
// jump in time), so that interpolated guesses miss and lookups bisect.
func TestSealedIndexLookupSkewed(t *testing.T) {
	dir := t.TempDir()
	l := mustOpen(t, dir, bigIndexOptions())
	m := newMaker(8)
	bs := fill(t, l, m, 2000, 1)
	m.ts += 1 << 40
	for len(l.Segments()) < 3 {
		bs = append(bs, fill(t, l, m, 50, 20)...)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	o := bigIndexOptions()
	cfs := &indexReadFS{FS: OSFS{}}
	o.FS = cfs
	l = mustOpen(t, dir, o)
	end := l.Segments()[0].NextOffset
	var lookups int64
	for _, b := range bs {
		h := b.Header()
		if h.BaseOffset >= end {
			break
		}
		for _, off := range []uint64{h.BaseOffset, h.NextOffset() - 1} {
			if checkRead(t, l, bs, off) != nil {
				t.Fatalf("ReadBatches(%d): corruption in an intact log", off)
			}
			lookups++
		}
		if got := l.OffsetForTime(h.Timestamp - 1); got != h.BaseOffset {
			t.Fatalf("OffsetForTime(ts of batch at %d) = %d", h.BaseOffset, got)
		}
	}
	if per := cfs.index.Load() / lookups; per <= guessWindow*IndexEntrySize {
		t.Fatalf("lookups read %d bytes of .index each: the guesses never missed", per)
	}
}
