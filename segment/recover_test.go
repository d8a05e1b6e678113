package segment

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tsstore/tsstore/record"
)

// closedLog writes n batches of recs records, closes the log and returns
// the batches.
func closedLog(t *testing.T, dir string, n, recs int) ([]record.Batch, *batchMaker) {
	t.Helper()
	l := mustOpen(t, dir, testOptions())
	m := newMaker(120)
	bs := fill(t, l, m, n, recs)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return bs, m
}

func appendToFile(t *testing.T, path string, data []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	f.Close()
}

func lastSegmentPath(t *testing.T, dir string) string {
	t.Helper()
	ms, _ := filepath.Glob(filepath.Join(dir, "*.log"))
	return ms[len(ms)-1]
}

func TestTornTailTruncated(t *testing.T) {
	for _, tc := range []struct {
		name string
		tail func(next record.Batch) []byte
	}{
		{"half batch", func(b record.Batch) []byte { return b[:len(b)/2] }},
		{"header only", func(b record.Batch) []byte { return b[:record.HeaderSize-3] }},
		{"garbage", func(record.Batch) []byte { return bytes.Repeat([]byte{0xde, 0xad}, 300) }},
		{"bad crc", func(b record.Batch) []byte { c := bytes.Clone(b); c[len(c)-1] ^= 0x10; return c }},
		{"zeros", func(record.Batch) []byte { return make([]byte, 4096) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			bs, m := closedLog(t, dir, 40, 3)
			next := m.batch(t, 3)
			path := lastSegmentPath(t, dir)
			before, _ := os.Stat(path)
			tail := tc.tail(next)
			appendToFile(t, path, tail)

			l := mustOpen(t, dir, testOptions())
			r := l.Recovery()
			if r.Path != path || r.TruncatedBytes != int64(len(tail)) || r.TruncatedAt != before.Size() || r.Reason == "" {
				t.Fatalf("Recovery = %+v, want %d bytes cut at %d", r, len(tail), before.Size())
			}
			after, _ := os.Stat(path)
			if after.Size() != before.Size() {
				t.Fatalf("file is %d bytes, want %d", after.Size(), before.Size())
			}
			if want := bs[len(bs)-1].Header().NextOffset(); l.NextOffset() != want {
				t.Fatalf("NextOffset = %d, want %d", l.NextOffset(), want)
			}
			if err := l.Append(next); err != nil {
				t.Fatalf("append after recovery: %v", err)
			}
			if err := l.Verify(nil); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestActiveCorruptionTruncates: inside the active segment the first bad
// batch ends the log, as after a torn write (the documented policy).
func TestActiveCorruptionTruncates(t *testing.T) {
	dir := t.TempDir()
	l := mustOpen(t, dir, DefaultOptions())
	m := newMaker(100)
	bs := fill(t, l, m, 10, 2)
	l.Close()
	path := filepath.Join(dir, FileName(0))
	pos := int64(len(bs[0]) * 4)
	flipByte(t, path, pos+record.HeaderSize+5)
	l = mustOpen(t, dir, DefaultOptions())
	if l.NextOffset() != bs[4].Header().BaseOffset || l.Recovery().TruncatedAt != pos {
		t.Fatalf("NextOffset %d, recovery %+v", l.NextOffset(), l.Recovery())
	}
}

func flipByte(t *testing.T, path string, pos int64) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	data[pos] ^= 0x01
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestSealedCorruption flips one bit inside a sealed segment: Open must not
// truncate it, and every reader must report the file and position.
func TestSealedCorruption(t *testing.T) {
	dir := t.TempDir()
	bs, _ := closedLog(t, dir, 100, 3)
	path := filepath.Join(dir, FileName(0))
	sizeBefore, _ := os.Stat(path)
	// Batch 3 of segment 0 is covered by the index, not by Open's tail scan.
	pos := int64(3 * len(bs[0]))
	flipByte(t, path, pos+record.HeaderSize+10)

	l := mustOpen(t, dir, testOptions())
	if fi, _ := os.Stat(path); fi.Size() != sizeBefore.Size() {
		t.Fatal("sealed segment was truncated")
	}
	checkCorrupt := func(what string, err error) {
		t.Helper()
		var ce *CorruptionError
		if !errors.As(err, &ce) || !errors.Is(err, ErrCorrupt) || !errors.Is(err, record.ErrCorrupt) {
			t.Fatalf("%s: %v is not a CorruptionError", what, err)
		}
		if ce.Path != path || ce.Position != pos || ce.Offset != bs[3].Header().BaseOffset {
			t.Fatalf("%s: %+v, want %s at %d", what, ce, path, pos)
		}
		if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "position") {
			t.Fatalf("%s: message %q", what, err)
		}
	}
	_, _, err := l.ReadBatches(nil, 0, 1<<20)
	checkCorrupt("ReadBatches", err)
	_, _, err = l.ReadBatches(nil, bs[3].Header().BaseOffset+1, 1)
	checkCorrupt("ReadBatches at batch", err)
	if _, _, err := l.ReadBatches(nil, bs[4].Header().BaseOffset, 1); err != nil {
		t.Fatalf("batch after the bad one: %v", err)
	}
	checkCorrupt("Scan", l.Scan(0, func(record.Batch) error { return nil }))
	var calls int
	checkCorrupt("Verify", l.Verify(func(done, total int64) { calls++ }))
	if calls == 0 {
		t.Fatal("no progress calls")
	}
	var dump bytes.Buffer
	if err := Dump(path, &dump); err != nil || !strings.Contains(dump.String(), "BAD") {
		t.Fatalf("Dump: %v\n%s", err, dump.String())
	}
}

// TestSealedTailCorruptionRefusesOpen: a bad batch that Open itself reads
// (after the last index entry of a sealed segment) fails Open.
func TestSealedTailCorruptionRefusesOpen(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, path string, size int64, last int)
	}{
		{"bit flip", func(t *testing.T, path string, size int64, last int) {
			flipByte(t, path, size-int64(last)+record.HeaderSize+3)
		}},
		{"torn", func(t *testing.T, path string, size int64, last int) {
			os.Truncate(path, size-int64(last)/2)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			bs, _ := closedLog(t, dir, 100, 3)
			path := filepath.Join(dir, FileName(0))
			fi, _ := os.Stat(path)
			tc.damage(t, path, fi.Size(), len(bs[0]))
			before, _ := os.ReadFile(path)
			_, err := Open(dir, testOptions())
			var ce *CorruptionError
			if !errors.As(err, &ce) || ce.Path != path || ce.Position != fi.Size()-int64(len(bs[0])) {
				t.Fatalf("Open = %v, want corruption in %s at %d", err, path, fi.Size()-int64(len(bs[0])))
			}
			after, _ := os.ReadFile(path)
			if !bytes.Equal(before, after) {
				t.Fatal("Open modified a sealed segment")
			}
		})
	}
}

// TestIndexRebuilt damages what Open checks of a sealed segment's index
// files (sizes, the first and last entries, the batches after the last):
// Open rebuilds them. Damage in the middle of the files is found by
// lookups and Verify instead (TestSealedIndexCorruptAfterOpen).
func TestIndexRebuilt(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, index, timeindex string)
	}{
		{"missing index", func(t *testing.T, ix, tx string) { os.Remove(ix) }},
		{"missing timeindex", func(t *testing.T, ix, tx string) { os.Remove(tx) }},
		{"wrong size", func(t *testing.T, ix, tx string) { appendToFile(t, ix, []byte{1, 2, 3}) }},
		{"empty", func(t *testing.T, ix, tx string) { os.WriteFile(ix, nil, 0o644) }},
		{"past EOF", func(t *testing.T, ix, tx string) {
			data, _ := os.ReadFile(ix)
			n := len(data)
			copy(data[n-4:], []byte{0x7f, 0, 0, 0})
			os.WriteFile(ix, data, 0o644)
		}},
		{"last entry off a batch start", func(t *testing.T, ix, tx string) {
			data, _ := os.ReadFile(ix)
			data[len(data)-1]++
			os.WriteFile(ix, data, 0o644)
		}},
		{"timestamps differ", func(t *testing.T, ix, tx string) {
			data, _ := os.ReadFile(tx)
			data[len(data)-1]++ // relative offset no longer matches .index
			os.WriteFile(tx, data, 0o644)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			closedLog(t, dir, 100, 3)
			ix := filepath.Join(dir, indexName(0))
			tx := filepath.Join(dir, timeIndexName(0))
			goodIx, _ := os.ReadFile(ix)
			goodTx, _ := os.ReadFile(tx)
			tc.damage(t, ix, tx)
			l := mustOpen(t, dir, testOptions())
			r := l.Recovery()
			if len(r.RebuiltIndexes) != 1 || r.RebuiltIndexes[0] != filepath.Join(dir, FileName(0)) {
				t.Fatalf("Recovery = %+v", r)
			}
			gotIx, _ := os.ReadFile(ix)
			gotTx, _ := os.ReadFile(tx)
			if !bytes.Equal(gotIx, goodIx) || !bytes.Equal(gotTx, goodTx) {
				t.Fatal("rebuilt index files differ from the originals")
			}
			if err := l.Verify(nil); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestContiguityViolation(t *testing.T) {
	dir := t.TempDir()
	closedLog(t, dir, 100, 3)
	ms, _ := filepath.Glob(filepath.Join(dir, "*.log"))
	if len(ms) < 3 {
		t.Fatal("want 3 segments")
	}
	// Remove a middle segment: the next one no longer follows the previous.
	os.Remove(ms[1])
	_, err := Open(dir, testOptions())
	var ce *CorruptionError
	if !errors.As(err, &ce) || ce.Path != ms[2] || !strings.Contains(err.Error(), ms[0]) {
		t.Fatalf("Open = %v, want a gap between %s and %s", err, ms[0], ms[2])
	}
}

func TestOpenDirectoryHygiene(t *testing.T) {
	dir := t.TempDir()
	closedLog(t, dir, 10, 1)
	tmp := filepath.Join(dir, indexName(0)+TmpSuffix)
	os.WriteFile(tmp, []byte("junk"), 0o644)
	os.WriteFile(filepath.Join(dir, "README"), []byte("ignored"), 0o644)
	l := mustOpen(t, dir, testOptions())
	if _, err := os.Stat(tmp); !os.IsNotExist(err) {
		t.Fatal("tmp file survived Open")
	}
	if r := l.Recovery(); len(r.RemovedTemp) != 1 {
		t.Fatalf("Recovery = %+v", r)
	}
	l.Close()
	bad := filepath.Join(dir, "123.log")
	os.WriteFile(bad, nil, 0o644)
	if _, err := Open(dir, testOptions()); err == nil || !strings.Contains(err.Error(), "123.log") {
		t.Fatalf("Open with a bad name = %v", err)
	}
}

// TestEmptyActiveAfterRoll: a crash right after a roll leaves an empty
// last segment; the log must continue from it.
func TestEmptyActiveAfterRoll(t *testing.T) {
	dir := t.TempDir()
	bs, m := closedLog(t, dir, 30, 3)
	next := bs[len(bs)-1].Header().NextOffset()
	os.WriteFile(filepath.Join(dir, FileName(next)), nil, 0o644)
	l := mustOpen(t, dir, testOptions())
	h, ok := l.LastHeader()
	if l.NextOffset() != next || !ok || h.NextOffset() != next {
		t.Fatalf("NextOffset %d, LastHeader %+v %v", l.NextOffset(), h, ok)
	}
	fill(t, l, m, 5, 3)
	if err := l.Verify(nil); err != nil {
		t.Fatal(err)
	}
}
