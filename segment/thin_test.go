package segment

import (
	"bytes"
	"io/fs"
	"os"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/tsstore/tsstore/record"
)

// thinLog builds a log whose every third batch is zstd-compressed and
// returns it with the base of its first sealed segment.
func thinLog(t *testing.T, dir string) (*Log, []record.Batch) {
	t.Helper()
	l := mustOpen(t, dir, testOptions())
	m := newMaker(40)
	var all []record.Batch
	for i := range 300 {
		b := m.batch(t, 1+i%6)
		if i%3 == 0 {
			c, err := record.Compress(nil, b, record.CompressionZstd)
			if err != nil {
				t.Fatal(err)
			}
			b = c
		}
		if err := l.Append(b); err != nil {
			t.Fatal(err)
		}
		all = append(all, b)
	}
	if n := len(l.Segments()); n < 3 {
		t.Fatalf("%d segments, want several sealed", n)
	}
	return l, all
}

// records reads every record of the log from offset 0, checking that the
// batches are contiguous.
func thinReadAll(t *testing.T, l *Log) map[uint64]string {
	t.Helper()
	out := map[uint64]string{}
	for from := uint64(0); from < l.NextOffset(); {
		raw, next, err := l.ReadBatches(nil, from, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range splitBatches(t, raw) {
			h := b.Header()
			if h.BaseOffset != from {
				t.Fatalf("batch at %d, want %d (not contiguous)", h.BaseOffset, from)
			}
			it := b.Records()
			var r record.Record
			for it.Next(&r) {
				out[r.Offset] = string(r.Stream) + "/" + string(r.Type) + "/" + string(r.Payload)
			}
			if err := it.Err(); err != nil {
				t.Fatal(err)
			}
			from = h.NextOffset()
		}
		if next != from {
			t.Fatalf("next %d, batches end at %d", next, from)
		}
	}
	return out
}

func TestThinSealed(t *testing.T) {
	dir := t.TempDir()
	l, _ := thinLog(t, dir)
	before := thinReadAll(t, l)
	segs := l.Segments()
	keep := func(r *record.Record) bool { return string(r.Stream) != "stream-3" || r.Offset%5 == 0 }

	// A second replica with the same bytes gets the same result.
	l2, _ := thinLog(t, t.TempDir())

	var freed int64
	for _, s := range segs[:len(segs)-1] {
		want, err := l.ThinDigest(s.BaseOffset, keep)
		if err != nil {
			t.Fatal(err)
		}
		res, err := l.ThinSealed(s.BaseOffset, keep, ThinOptions{Expect: func(r ThinResult) error {
			if r.Size != want.Size || r.Digest != want.Digest {
				t.Errorf("ThinSealed %d/%08x, ThinDigest %d/%08x", r.Size, r.Digest, want.Size, want.Digest)
			}
			return nil
		}})
		if err != nil {
			t.Fatal(err)
		}
		if !res.Rewritten || res.Dropped == 0 || res.Size >= s.Size {
			t.Fatalf("segment %d: %+v (was %d bytes)", s.BaseOffset, res, s.Size)
		}
		freed += s.Size - res.Size
		d, err := l.Digest(s.BaseOffset, true)
		if err != nil || d != res.Digest {
			t.Fatalf("Digest after thinning: %08x, %v; want %08x", d, err, res.Digest)
		}
		res2, err := l2.ThinSealed(s.BaseOffset, keep, ThinOptions{})
		if err != nil || res2.Digest != res.Digest || res2.Size != res.Size {
			t.Fatalf("replica: %+v %v, want %+v", res2, err, res)
		}
		// Idempotent: thinning again writes nothing.
		if again, err := l.ThinSealed(s.BaseOffset, keep, ThinOptions{}); err != nil || again.Rewritten || again.Digest != res.Digest {
			t.Fatalf("second thinning: %+v %v", again, err)
		}
		if err := l.VerifySegment(s.BaseOffset); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("freed %d bytes", freed)

	check := func(l *Log) {
		t.Helper()
		after := thinReadAll(t, l)
		sealedEnd := segs[len(segs)-1].BaseOffset
		for off, v := range before {
			_, ok := after[off]
			dropped := off < sealedEnd && v[:len("stream-3")] == "stream-3" && off%5 != 0
			if ok == dropped {
				t.Fatalf("offset %d (%s): kept %v", off, v, ok)
			}
			if ok && after[off] != v {
				t.Fatalf("offset %d: %q, was %q", off, after[off], v)
			}
		}
		// The stream index was rebuilt: a stream read sees only what is left.
		for _, stream := range []string{"stream-3", "stream-2"} {
			var n, want int
			for _, v := range after {
				if v[:len(stream)] == stream {
					want++
				}
			}
			for from := uint64(0); from < l.NextOffset(); {
				raw, next, err := l.StreamBatches(nil, stream, from, 1<<20)
				if err != nil {
					t.Fatal(err)
				}
				for _, b := range splitBatches(t, raw) {
					it := b.Records()
					var r record.Record
					for it.Next(&r) {
						if string(r.Stream) == stream {
							n++
						}
					}
				}
				from = next
			}
			if n != want {
				t.Fatalf("%s: stream read %d records, want %d", stream, n, want)
			}
		}
	}
	check(l)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = mustOpen(t, dir, testOptions())
	if err := l.Verify(nil); err != nil {
		t.Fatal(err)
	}
	check(l)
}

func TestThinSealedKeepsCompressionAndLastRecord(t *testing.T) {
	l, _ := thinLog(t, t.TempDir())
	s := l.Segments()[1]
	// Drop every record: the segment keeps its last one, spanning all.
	res, err := l.ThinSealed(s.BaseOffset, func(*record.Record) bool { return false }, ThinOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Records != 1 {
		t.Fatalf("%+v, want 1 record kept", res)
	}
	raw, next, err := l.ReadBatches(nil, s.BaseOffset, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	bs := splitBatches(t, raw)
	h := bs[0].Header()
	if h.BaseOffset != s.BaseOffset || h.NextOffset() != s.NextOffset || next < s.NextOffset {
		t.Fatalf("batch %d..%d, segment %d..%d", h.BaseOffset, h.NextOffset(), s.BaseOffset, s.NextOffset)
	}

	// A compressed batch thinned stays compressed.
	s = l.Segments()[0]
	var codecs []byte
	for from := s.BaseOffset; from < s.NextOffset; {
		raw, _, err := l.ReadBatches(nil, from, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range splitBatches(t, raw) {
			codecs = append(codecs, b.Header().Compression())
			from = b.Header().NextOffset()
		}
	}
	if _, err := l.ThinSealed(s.BaseOffset, func(r *record.Record) bool { return r.Offset%2 == 0 }, ThinOptions{}); err != nil {
		t.Fatal(err)
	}
	var after []byte
	for from := s.BaseOffset; from < s.NextOffset; {
		raw, _, err := l.ReadBatches(nil, from, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range splitBatches(t, raw) {
			after = append(after, b.Header().Compression())
			from = b.Header().NextOffset()
		}
	}
	if !bytes.Contains(after, []byte{record.CompressionZstd}) || !bytes.Contains(codecs, []byte{record.CompressionZstd}) {
		t.Fatalf("codecs before %v after %v", codecs, after)
	}
}

func TestThinSealedGateRefuses(t *testing.T) {
	l, _ := thinLog(t, t.TempDir())
	s := l.Segments()[0]
	_, err := l.ThinSealed(s.BaseOffset, func(r *record.Record) bool { return r.Offset%2 == 0 }, ThinOptions{
		Gate: func(func() error) error { return ErrThinMismatch },
	})
	if err != ErrThinMismatch {
		t.Fatalf("err %v", err)
	}
	if d, _ := l.Digest(s.BaseOffset, true); d != s.Digest || !s.DigestKnown {
		t.Fatalf("segment changed")
	}
}

// A reader that holds the segment when it is thinned keeps reading the old
// bytes; appends go on meanwhile (run with -race).
func TestThinSealedWhileReadingAndAppending(t *testing.T) {
	l, _ := thinLog(t, t.TempDir())
	s := l.Segments()[0]
	old, err := l.OpenSealed(s.BaseOffset)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	want := make([]byte, s.Size)
	if _, err := old.ReadAt(want, 0); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		m := newMaker(40)
		m.next = l.NextOffset()
		m.ts = 1_800_000_000_000_000_000
		for range 200 {
			if err := l.Append(m.batch(t, 3)); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	res, err := l.ThinSealed(s.BaseOffset, func(r *record.Record) bool { return r.Offset%3 == 0 }, ThinOptions{})
	if err != nil || !res.Rewritten {
		t.Fatalf("%+v %v", res, err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	got := make([]byte, s.Size)
	if _, err := old.ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("the old reader's bytes changed: %v", err)
	}
	if d, err := l.Digest(s.BaseOffset, true); err != nil || d != res.Digest {
		t.Fatalf("new digest %08x %v, want %08x", d, err, res.Digest)
	}
	thinReadAll(t, l)
}

// Dropping the leading batches of a segment rebases the first kept batch
// to the segment's base; dropping whole batches in the middle stretches
// the kept batch before them. The segment still starts at its base and
// its batches chain to its end.
func TestThinSealedRebasesAndStretches(t *testing.T) {
	l, _ := thinLog(t, t.TempDir())
	s := l.Segments()[1]
	mid := s.BaseOffset + (s.NextOffset-s.BaseOffset)/2
	keep := func(r *record.Record) bool {
		return r.Offset > s.BaseOffset+10 && (r.Offset < mid || r.Offset > mid+20)
	}
	if _, err := l.ThinSealed(s.BaseOffset, keep, ThinOptions{}); err != nil {
		t.Fatal(err)
	}
	raw, _, err := l.ReadBatches(nil, s.BaseOffset, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	first := splitBatches(t, raw)[0].Header()
	if first.BaseOffset != s.BaseOffset || first.Complete() {
		t.Fatalf("first batch %+v, segment base %d", first, s.BaseOffset)
	}
	got := thinReadAll(t, l)
	for off := s.BaseOffset; off < s.NextOffset; off++ {
		if _, ok := got[off]; ok != keep(&record.Record{Offset: off}) {
			t.Fatalf("offset %d kept %v", off, ok)
		}
	}
}

// syncCountFS counts file and directory fsyncs while counting is set.
type syncCountFS struct {
	FS
	counting atomic.Bool
	syncs    atomic.Int64
}

func (f *syncCountFS) OpenFile(name string, flag int, perm fs.FileMode) (File, error) {
	file, err := f.FS.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return &syncCountFile{File: file, fs: f}, nil
}

func (f *syncCountFS) SyncDir(dir string) error {
	if f.counting.Load() {
		f.syncs.Add(1)
	}
	return f.FS.SyncDir(dir)
}

type syncCountFile struct {
	File
	fs *syncCountFS
}

func (f *syncCountFile) Sync() error {
	if f.fs.counting.Load() {
		f.fs.syncs.Add(1)
	}
	return f.File.Sync()
}

// The publishing step ThinSealed hands its Gate (which the fsm holds a
// lock around that a snapshot being taken waits for, on Raft's apply
// goroutine) makes one fsync, the directory's: the index files are
// written and fsynced before it. It made four before (three index files
// and the directory).
func TestThinSealedGateHoldsOneFsync(t *testing.T) {
	cf := &syncCountFS{FS: OSFS{}}
	opts := testOptions()
	opts.FS = cf
	l := mustOpen(t, t.TempDir(), opts)
	m := newMaker(40)
	for i := range 300 {
		if err := l.Append(m.batch(t, 1+i%6)); err != nil {
			t.Fatal(err)
		}
	}
	s := l.Segments()[0]
	res, err := l.ThinSealed(s.BaseOffset, func(r *record.Record) bool { return r.Offset%2 == 0 }, ThinOptions{
		Gate: func(publish func() error) error {
			cf.counting.Store(true)
			defer cf.counting.Store(false)
			return publish()
		},
	})
	if err != nil || !res.Rewritten {
		t.Fatalf("thin: %+v, %v", res, err)
	}
	if n := cf.syncs.Load(); n != 1 {
		t.Fatalf("%d fsyncs inside the gate, want 1 (the directory's)", n)
	}
	if d, err := l.Digest(s.BaseOffset, true); err != nil || d != res.Digest {
		t.Fatalf("digest %08x, %v; want %08x", d, err, res.Digest)
	}
	ents, err := os.ReadDir(l.dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), TmpSuffix) {
			t.Errorf("%s left behind", e.Name())
		}
	}
}
