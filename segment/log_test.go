package segment

import (
	"bytes"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tsstore/tsstore/record"
)

func TestOptionsValidate(t *testing.T) {
	if err := DefaultOptions().Validate(); err != nil {
		t.Fatal(err)
	}
	for _, o := range []Options{
		{SegmentBytes: 100, IndexIntervalBytes: 4096},
		{SegmentBytes: 2 << 30, IndexIntervalBytes: 4096},
		{SegmentBytes: 64 << 20, IndexIntervalBytes: 0},
		{},
	} {
		if err := o.Validate(); err == nil {
			t.Errorf("Validate(%+v) = nil", o)
		}
		if _, err := Open(t.TempDir(), o); err == nil {
			t.Errorf("Open with %+v succeeded", o)
		}
	}
}

func TestFileName(t *testing.T) {
	if got := FileName(42); got != "00000000000000000042.log" {
		t.Fatalf("FileName(42) = %q", got)
	}
	for _, bad := range []string{"42.log", "0000000000000000004x.log", "99999999999999999999.log"} {
		if _, err := parseLogName(bad); err == nil {
			t.Errorf("parseLogName(%q) = nil error", bad)
		}
	}
}

func TestEmptyLog(t *testing.T) {
	dir := t.TempDir()
	l := mustOpen(t, dir, testOptions())
	if l.FirstOffset() != 0 || l.NextOffset() != 0 {
		t.Fatalf("offsets %d %d", l.FirstOffset(), l.NextOffset())
	}
	if _, ok := l.LastHeader(); ok {
		t.Fatal("LastHeader on empty log")
	}
	out, next, err := l.ReadBatches(nil, 0, 1<<20)
	if err != nil || len(out) != 0 || next != 0 {
		t.Fatalf("ReadBatches = %d bytes, %d, %v", len(out), next, err)
	}
	if got := l.OffsetForTime(0); got != 0 {
		t.Fatalf("OffsetForTime = %d", got)
	}
	if err := l.Verify(nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, FileName(0))); err != nil {
		t.Fatal(err)
	}
}

// TestRoundTrip appends across many rolls, reads everything back through
// ReadBatches and Scan, reopens, and reads again.
func TestRoundTrip(t *testing.T) {
	dir := t.TempDir()
	o := testOptions()
	l := mustOpen(t, dir, o)
	m := newMaker(100)
	var want []record.Batch
	for i := range 300 {
		want = append(want, fill(t, l, m, 1, 1+i%9)...)
	}
	check := func(l *Log) {
		t.Helper()
		segs := l.Segments()
		if len(segs) < 10 {
			t.Fatalf("only %d segments", len(segs))
		}
		for i, s := range segs {
			if s.Sealed != (i < len(segs)-1) {
				t.Errorf("segment %d sealed=%v", i, s.Sealed)
			}
			if i > 0 && s.BaseOffset != segs[i-1].NextOffset {
				t.Errorf("segment %d not contiguous", i)
			}
			if s.Size > o.SegmentBytes {
				t.Errorf("segment %d is %d bytes", i, s.Size)
			}
		}
		out, next, err := l.ReadBatches(nil, 0, 1<<30)
		if err != nil {
			t.Fatal(err)
		}
		if next != m.next {
			t.Fatalf("next = %d, want %d", next, m.next)
		}
		if !bytes.Equal(out, bytes.Join(bytesOf(want), nil)) {
			t.Fatal("ReadBatches bytes differ from appended bytes")
		}
		var got []record.Batch
		err = l.Scan(0, func(b record.Batch) error {
			got = append(got, bytes.Clone(b))
			return nil
		})
		if err != nil || len(got) != len(want) {
			t.Fatalf("Scan: %d batches, %v", len(got), err)
		}
		h, ok := l.LastHeader()
		if !ok || h.NextOffset() != m.next || h.RaftIndex != m.raft {
			t.Fatalf("LastHeader = %+v %v", h, ok)
		}
		if err := l.Verify(nil); err != nil {
			t.Fatal(err)
		}
	}
	check(l)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := l.Append(m.batch(t, 1)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Append after Close = %v", err)
	}
	m.next = want[len(want)-1].Header().NextOffset()
	m.raft--
	l2 := mustOpen(t, dir, o)
	if r := l2.Recovery(); r.TruncatedBytes != 0 || len(r.RebuiltIndexes) != 0 {
		t.Fatalf("clean reopen repaired something: %+v", r)
	}
	check(l2)
	want = append(want, fill(t, l2, m, 20, 3)...)
	check(l2)
}

func bytesOf(bs []record.Batch) [][]byte {
	out := make([][]byte, len(bs))
	for i, b := range bs {
		out[i] = b
	}
	return out
}

func TestReadBatchesOffsets(t *testing.T) {
	l := mustOpen(t, t.TempDir(), testOptions())
	m := newMaker(200)
	batches := fill(t, l, m, 120, 5) // 5 offsets per batch, several segments
	for _, tc := range []struct {
		name string
		from uint64
		want int // index of the first batch returned
	}{
		{"first", 0, 0},
		{"middle of first batch", 3, 0},
		{"second batch", 5, 1},
		{"middle", 5*57 + 2, 57},
		{"last batch start", 5 * 119, 119},
		{"last offset", 5*120 - 1, 119},
	} {
		out, next, err := l.ReadBatches(nil, tc.from, 1)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		got := splitBatches(t, out)
		if len(got) != 1 || !bytes.Equal(got[0], batches[tc.want]) {
			t.Fatalf("%s: got %d batches", tc.name, len(got))
		}
		if next != batches[tc.want].Header().NextOffset() {
			t.Fatalf("%s: next = %d", tc.name, next)
		}
		// A budget of three batches returns three.
		out, _, err = l.ReadBatches(out[:0], tc.from, 3*len(batches[0]))
		if err != nil {
			t.Fatal(err)
		}
		if n := len(splitBatches(t, out)); n != min(3, 120-tc.want) {
			t.Fatalf("%s: %d batches with a 3-batch budget", tc.name, n)
		}
	}
	out, next, err := l.ReadBatches(nil, 7, math.MaxInt)
	if err != nil || next != 600 || len(splitBatches(t, out)) != 119 {
		t.Fatalf("huge maxBytes: %d bytes, next %d, %v", len(out), next, err)
	}
	prefix := []byte("keep")
	out, next, err = l.ReadBatches(prefix, 600, 1<<20)
	if err != nil || next != 600 || string(out) != "keep" {
		t.Fatalf("beyond end: %q %d %v", out, next, err)
	}
	out, next, err = l.ReadBatches(prefix, 10_000, 1<<20)
	if err != nil || next != 10_000 || string(out) != "keep" {
		t.Fatalf("far beyond end: %q %d %v", out, next, err)
	}
	// dst is appended to, not overwritten.
	out, _, err = l.ReadBatches([]byte("keep"), 0, 0)
	if err != nil || !bytes.HasPrefix(out, []byte("keep")) || !bytes.Equal(out[4:], batches[0]) {
		t.Fatalf("prefix lost: %v", err)
	}
}

func TestReadBatchesCompacted(t *testing.T) {
	dir := t.TempDir()
	l := mustOpen(t, dir, testOptions())
	m := newMaker(300)
	fill(t, l, m, 60, 4)
	segs := l.Segments()
	if _, err := l.DropSealed(segs[0].BaseOffset); err != nil {
		t.Fatal(err)
	}
	l.Close()
	l = mustOpen(t, dir, testOptions())
	if l.FirstOffset() != segs[1].BaseOffset {
		t.Fatalf("FirstOffset = %d, want %d", l.FirstOffset(), segs[1].BaseOffset)
	}
	_, _, err := l.ReadBatches(nil, 0, 1<<20)
	var oce *OffsetCompactedError
	if !errors.Is(err, ErrOffsetCompacted) || !errors.As(err, &oce) || oce.FirstOffset != segs[1].BaseOffset {
		t.Fatalf("ReadBatches below first = %v", err)
	}
	if err := l.Scan(0, func(record.Batch) error { return nil }); !errors.Is(err, ErrOffsetCompacted) {
		t.Fatalf("Scan below first = %v", err)
	}
}

func TestAppendChecks(t *testing.T) {
	l := mustOpen(t, t.TempDir(), testOptions())
	m := newMaker(10)
	b := m.batch(t, 2)
	if err := l.Append(b); err != nil {
		t.Fatal(err)
	}
	if err := l.Append(b); !errors.Is(err, ErrOffsetMismatch) {
		t.Fatalf("duplicate append = %v", err)
	}
	b2 := m.batch(t, 2)
	if err := l.Append(append(bytes.Clone(b2), 0)); !errors.Is(err, ErrInvalidBatch) {
		t.Fatalf("trailing byte = %v", err)
	}
	bad := bytes.Clone(b2)
	bad[len(bad)-1] ^= 1
	if err := l.Append(bad); !errors.Is(err, ErrInvalidBatch) || errors.Is(err, ErrCorrupt) {
		t.Fatalf("bad CRC = %v", err)
	}
	m.ts -= 1_000_000
	m.next = b2.Header().BaseOffset
	old := m.batch(t, 1)
	if err := l.Append(old); !errors.Is(err, ErrTimestampOrder) {
		t.Fatalf("old timestamp = %v", err)
	}
	if err := l.Append(b2); err != nil {
		t.Fatal(err)
	}
	// Errors like these are not sticky.
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
}

// TestStickyWriteError checks that a failed write or fsync breaks the log
// for good, and that a reopen recovers everything that was complete.
func TestStickyWriteError(t *testing.T) {
	for _, mode := range []string{"write", "sync", "roll"} {
		t.Run(mode, func(t *testing.T) {
			dir := t.TempDir()
			ffs := &faultFS{FS: OSFS{}}
			o := testOptions()
			o.FS = ffs
			l := mustOpen(t, dir, o)
			m := newMaker(100)
			fill(t, l, m, 5, 3)
			good := l.NextOffset()
			var err error
			switch mode {
			case "write":
				ffs.failWrite.Store(true)
				err = l.Append(m.batch(t, 3))
			case "sync":
				ffs.failSync.Store(true)
				err = l.Sync()
			case "roll":
				ffs.failSync.Store(true)
				for err == nil && len(l.Segments()) == 1 {
					err = l.Append(m.batch(t, 3))
				}
				good = l.NextOffset()
			}
			if !errors.Is(err, ErrWriteFailed) || !strings.Contains(err.Error(), errInjected.Error()) {
				t.Fatalf("first failure = %v", err)
			}
			ffs.failWrite.Store(false)
			ffs.failSync.Store(false)
			if err := l.Append(m.batch(t, 1)); !errors.Is(err, ErrWriteFailed) {
				t.Fatalf("Append after failure = %v", err)
			}
			if err := l.Sync(); !errors.Is(err, ErrWriteFailed) {
				t.Fatalf("Sync after failure = %v", err)
			}
			if l.NextOffset() != good {
				t.Fatalf("NextOffset moved to %d", l.NextOffset())
			}
			if _, _, err := l.ReadBatches(nil, 0, 1<<20); err != nil {
				t.Fatalf("reads must keep working: %v", err)
			}
			if err := l.Close(); !errors.Is(err, ErrWriteFailed) {
				t.Fatalf("Close = %v", err)
			}
			l2 := mustOpen(t, dir, testOptions())
			if l2.NextOffset() != good {
				t.Fatalf("after reopen NextOffset = %d, want %d (%+v)", l2.NextOffset(), good, l2.Recovery())
			}
			if err := l2.Verify(nil); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestOffsetForTime(t *testing.T) {
	l := mustOpen(t, t.TempDir(), testOptions())
	m := newMaker(150)
	var bs []record.Batch
	for i := range 200 {
		b := m.batch(t, 2)
		if i%3 == 0 {
			m.ts -= 1000 // runs of equal timestamps
			b = rebuildTS(t, b, m.ts)
		}
		if err := l.Append(b); err != nil {
			t.Fatal(err)
		}
		bs = append(bs, b)
	}
	if len(l.Segments()) < 3 {
		t.Fatal("want several segments")
	}
	brute := func(ts int64) uint64 {
		for _, b := range bs {
			if b.Header().Timestamp >= ts {
				return b.Header().BaseOffset
			}
		}
		return l.NextOffset()
	}
	first, last := bs[0].Header().Timestamp, bs[len(bs)-1].Header().Timestamp
	for ts := first - 2500; ts <= last+2500; ts += 250 {
		if got, want := l.OffsetForTime(ts), brute(ts); got != want {
			t.Fatalf("OffsetForTime(%d) = %d, want %d", ts, got, want)
		}
	}
}

// rebuildTS re-encodes b with another timestamp.
func rebuildTS(t *testing.T, b record.Batch, ts int64) record.Batch {
	t.Helper()
	h := b.Header()
	var bl record.Builder
	bl.Reset(h.BaseOffset, h.RaftIndex, ts, h.Attributes)
	it := b.Records()
	var r record.Record
	for it.Next(&r) {
		if err := bl.AddAt(&r, r.Offset-h.BaseOffset); err != nil {
			t.Fatal(err)
		}
	}
	out, err := bl.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Clone(out)
}

func TestSegmentsAndSync(t *testing.T) {
	dir := t.TempDir()
	l := mustOpen(t, dir, testOptions())
	m := newMaker(500)
	fill(t, l, m, 50, 2)
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	segs := l.Segments()
	for _, s := range segs {
		fi, err := os.Stat(s.Path)
		if err != nil || fi.Size() != s.Size {
			t.Fatalf("%s: size %d vs %v", s.Path, s.Size, err)
		}
		if s.FirstTimestamp > s.LastTimestamp {
			t.Fatalf("%+v", s)
		}
		if s.Sealed {
			for _, suf := range []string{IndexSuffix, TimeIndexSuffix, StreamsSuffix} {
				p := strings.TrimSuffix(s.Path, LogSuffix) + suf
				if _, err := os.Stat(p); err != nil {
					t.Fatalf("sealed segment lacks %s", p)
				}
			}
		}
	}
}

// TestReadBatchesLargeBatches uses batches larger than one read and an
// index far sparser than a batch, so readers must step over and re-read
// batches; every answer is checked against a brute-force expectation.
func TestReadBatchesLargeBatches(t *testing.T) {
	o := DefaultOptions()
	o.SegmentBytes = 1 << 20
	o.IndexIntervalBytes = 100 << 10
	l := mustOpen(t, t.TempDir(), o)
	m := newMaker(1000)
	var bs []record.Batch
	for i := range 120 {
		bs = append(bs, fill(t, l, m, 1, 1+(i*7)%40)...)
	}
	expect := func(from uint64, maxBytes int) (out []byte, next uint64) {
		for _, b := range bs {
			h := b.Header()
			if h.NextOffset() <= from {
				continue
			}
			if len(out) > 0 && len(out)+len(b) > maxBytes {
				break
			}
			out, next = append(out, b...), h.NextOffset()
		}
		return out, next
	}
	var buf []byte
	for i, b := range bs {
		h := b.Header()
		for _, from := range []uint64{h.BaseOffset, h.LastOffset()} {
			for _, maxBytes := range []int{1, 30 << 10, 200 << 10} {
				var next uint64
				var err error
				buf, next, err = l.ReadBatches(buf[:0], from, maxBytes)
				want, wantNext := expect(from, maxBytes)
				if err != nil || next != wantNext || !bytes.Equal(buf, want) {
					t.Fatalf("batch %d from %d max %d: %d bytes next %d (%v), want %d bytes next %d",
						i, from, maxBytes, len(buf), next, err, len(want), wantNext)
				}
			}
		}
	}
}
