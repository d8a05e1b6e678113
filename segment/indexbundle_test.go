package segment

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

// bundleRemote is a memRemote that also stores index bundles, under the
// object's key with ".idx" for ".log" (the server's scheme).
type bundleRemote struct {
	*memRemote
	fetched atomic.Int64 // IndexBundle calls that returned a bundle
}

func bundleKey(key string) string { return strings.TrimSuffix(key, ".log") + ".idx" }

func (r *bundleRemote) IndexBundle(key string) ([]byte, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	b, ok := r.objs[bundleKey(key)]
	if !ok {
		return nil, fmt.Errorf("%w: %s: not found", ErrRemoteLost, bundleKey(key))
	}
	r.fetched.Add(1)
	return bytes.Clone(b), nil
}

// segmentFiles reads a segment's three index files.
func segmentFiles(t *testing.T, dir string, base uint64) (index, times, streams []byte) {
	t.Helper()
	var out [3][]byte
	for i, name := range []string{indexName(base), timeIndexName(base), streamsName(base)} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		out[i] = b
	}
	return out[0], out[1], out[2]
}

// TestIndexBundleRoundTrip: a sealed segment's bundle decodes to its
// three index files byte for byte and to its range and size, the same
// before and after the segment is tiered; a bundle is refused for any
// other segment.
func TestIndexBundleRoundTrip(t *testing.T) {
	l, r, dir, _ := tieredLog(t)
	sealed := l.Segments()[:len(l.Segments())-1]
	before := map[uint64][]byte{}
	for _, s := range sealed {
		b, err := l.IndexBundle(s.BaseOffset)
		if err != nil {
			t.Fatalf("IndexBundle(%d): %v", s.BaseOffset, err)
		}
		x, err := DecodeIndexBundle(b, "k", s.BaseOffset, s.NextOffset, s.Size)
		if err != nil {
			t.Fatalf("decode the bundle of %d: %v", s.BaseOffset, err)
		}
		index, times, streams := segmentFiles(t, dir, s.BaseOffset)
		if !bytes.Equal(x.Index, index) || !bytes.Equal(x.TimeIndex, times) || !bytes.Equal(x.Streams, streams) {
			t.Fatalf("bundle of %d: files differ from the segment's", s.BaseOffset)
		}
		for _, other := range []struct {
			base, next uint64
			size       int64
		}{{s.BaseOffset + 1, s.NextOffset, s.Size}, {s.BaseOffset, s.NextOffset + 1, s.Size}, {s.BaseOffset, s.NextOffset, s.Size - 1}} {
			_, err := DecodeIndexBundle(b, "k", other.base, other.next, other.size)
			var ce *CorruptionError
			if !errors.As(err, &ce) || ce.Path != "k" {
				t.Fatalf("bundle of [%d, %d) %d bytes decoded for [%d, %d) %d bytes: %v", s.BaseOffset, s.NextOffset, s.Size, other.base, other.next, other.size, err)
			}
		}
		before[s.BaseOffset] = b
	}
	tierAll(t, l, r)
	for _, s := range sealed {
		b, err := l.IndexBundle(s.BaseOffset)
		if err != nil || !bytes.Equal(b, before[s.BaseOffset]) {
			t.Fatalf("IndexBundle(%d) of the tiered segment: %v, or other bytes", s.BaseOffset, err)
		}
	}
	if _, err := l.IndexBundle(l.ActiveBase()); !errors.Is(err, ErrNotSealed) {
		t.Fatalf("IndexBundle of the active segment: %v", err)
	}
}

// TestIndexBundleCorrupt: every flipped byte and every truncation of a
// bundle is refused with a *CorruptionError, as are index files whose
// framing is fine but whose contents do not describe the segment.
func TestIndexBundleCorrupt(t *testing.T) {
	l, _, _, _ := tieredLog(t)
	s := l.Segments()[1]
	b, err := l.IndexBundle(s.BaseOffset)
	if err != nil {
		t.Fatal(err)
	}
	refused := func(what string, p []byte) {
		t.Helper()
		_, err := DecodeIndexBundle(p, "k", s.BaseOffset, s.NextOffset, s.Size)
		var ce *CorruptionError
		if !errors.As(err, &ce) || !errors.Is(err, ErrCorrupt) {
			t.Fatalf("%s: %v, want a *CorruptionError", what, err)
		}
	}
	for i := range b {
		c := bytes.Clone(b)
		c[i] ^= 0x08
		refused(fmt.Sprintf("flip at %d", i), c)
	}
	for _, n := range []int{0, 10, indexBundleHeader, indexBundleHeader + 5, len(b) / 2, len(b) - 1} {
		refused(fmt.Sprintf("first %d bytes", n), b[:n])
	}
	refused("a byte more", append(bytes.Clone(b), 0))
	// Well framed, wrong contents: sections swapped, an index of
	// another segment.
	x, _, err := decodeIndexBundle(b)
	if err != nil {
		t.Fatal(err)
	}
	swapped := *x
	swapped.Index, swapped.TimeIndex = x.TimeIndex, x.Index
	refused("index and time index swapped", encodeIndexBundle(&swapped))
	other := l.Segments()[0]
	ob, err := l.IndexBundle(other.BaseOffset)
	if err != nil {
		t.Fatal(err)
	}
	ox, _, _ := decodeIndexBundle(ob)
	mixed := *x
	mixed.Streams = ox.Streams
	refused("another segment's .streams", encodeIndexBundle(&mixed))
}

// goldenBundle is a fixed bundle of two index entries and one stream.
func goldenBundle() *IndexBundle {
	index, times := encodeIndex([]indexEntry{{rel: 0, pos: 0, ts: 1_700_000_000_000_000_000}, {rel: 7, pos: 4100, ts: 1_700_000_000_000_000_500}})
	set := map[string]*liveStream{"run/1": {}}
	set["run/1"].add(streamEntry{rel: 0, pos: 0, size: 120, span: 2, first: 1, last: 3})
	set["run/1"].add(streamEntry{rel: 7, pos: 4100, size: 90, span: 0, first: 4, last: 4})
	return &IndexBundle{BaseOffset: 990, NextOffset: 998, LogSize: 4190, Index: index, TimeIndex: times,
		Streams: encodeStreams(990, 998, 4190, set)}
}

// TestIndexBundleGolden pins the frozen bundle format: a fixed bundle
// encodes to testdata/indexbundle.golden (a hex dump) byte for byte, and
// decodes back.
func TestIndexBundleGolden(t *testing.T) {
	x := goldenBundle()
	enc := encodeIndexBundle(x)
	got := []byte(hex.Dump(enc))
	golden := filepath.Join("testdata", "indexbundle.golden")
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("bundle bytes differ from %s (a frozen format):\n%s", golden, got)
	}
	d, err := DecodeIndexBundle(enc, "golden", 990, 998, 4190)
	if err != nil || !bytes.Equal(d.Index, x.Index) || !bytes.Equal(d.TimeIndex, x.TimeIndex) || !bytes.Equal(d.Streams, x.Streams) {
		t.Fatalf("decode the golden bundle: %v", err)
	}
}

// FuzzDecodeIndexBundle: any bytes either decode to a bundle that
// encodes back to the same bytes, or are refused; never a panic. The
// full decoder never accepts what the framing refuses.
func FuzzDecodeIndexBundle(f *testing.F) {
	enc := encodeIndexBundle(goldenBundle())
	f.Add(enc)
	f.Add(enc[:len(enc)-1])
	f.Add(enc[:indexBundleHeader+indexBundleFrame])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, p []byte) {
		x, _, err := decodeIndexBundle(p)
		if _, ferr := DecodeIndexBundle(p, "k", 990, 998, 4190); err != nil && ferr == nil {
			t.Fatalf("the full decoder accepts what the framing refuses: %v", err)
		}
		if err != nil {
			return
		}
		if re := encodeIndexBundle(x); !bytes.Equal(re, p) {
			t.Fatalf("decoded bundle re-encodes to other bytes:\n%x\n%x", p, re)
		}
	})
}

// tieredLogWithBundles is tieredLog with every sealed segment tiered and
// its bundle stored beside its object; the log is closed.
func tieredLogWithBundles(t *testing.T) (*bundleRemote, string, Options, []SegmentInfo) {
	t.Helper()
	l, mr, dir, o := tieredLog(t)
	r := &bundleRemote{memRemote: mr}
	o.Remote = r
	keys := tierAll(t, l, mr)
	for base, key := range keys {
		b, err := l.IndexBundle(base)
		if err != nil {
			t.Fatal(err)
		}
		mr.put(bundleKey(key), b)
	}
	segs := l.Segments()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return r, dir, o, segs
}

// TestOpenFetchesIndexBundle: a tiered segment whose index files are
// lost gets them from its bundle at Open, byte for byte, without reading
// the object; a bundle that is missing or damaged is not used, and the
// files are rebuilt from the object instead, saying why.
func TestOpenFetchesIndexBundle(t *testing.T) {
	r, dir, o, segs := tieredLogWithBundles(t)
	l := mustOpen(t, dir, o)
	wantAll, wantStream := readTiered(t, l)
	l.Close()
	s := segs[1]
	index, times, streams := segmentFiles(t, dir, s.BaseOffset)
	lose := func() {
		for _, name := range []string{indexName(s.BaseOffset), timeIndexName(s.BaseOffset), streamsName(s.BaseOffset)} {
			if err := os.Remove(filepath.Join(dir, name)); err != nil {
				t.Fatal(err)
			}
		}
	}

	lose()
	reads := r.reads.Load()
	l = mustOpen(t, dir, o)
	rec := l.Recovery()
	if len(rec.FetchedIndexes) != 1 || rec.FetchedIndexes[0] != filepath.Join(dir, tieredName(s.BaseOffset)) ||
		len(rec.RebuiltIndexes) != 0 || len(rec.IndexBundleFailures) != 0 {
		t.Fatalf("recovery %+v: want the index files of %d fetched", rec, s.BaseOffset)
	}
	if got := r.reads.Load(); got != reads || r.fetched.Load() != 1 {
		t.Fatalf("Open read the object %d times, fetched %d bundles; want 0 and 1", got-reads, r.fetched.Load())
	}
	gi, gt, gs := segmentFiles(t, dir, s.BaseOffset)
	if !bytes.Equal(gi, index) || !bytes.Equal(gt, times) || !bytes.Equal(gs, streams) {
		t.Fatal("fetched index files differ from the lost ones")
	}
	all, stream := readTiered(t, l)
	if !bytes.Equal(all, wantAll) || !bytes.Equal(stream, wantStream) {
		t.Fatal("reads after the fetch differ")
	}
	if err := l.Verify(nil); err != nil {
		t.Fatalf("Verify: %v", err)
	}
	l.Close()

	// A damaged bundle, then a missing one: rebuilt from the object.
	key := bundleKey(s.Key)
	for _, tc := range []struct {
		name, reason string
		edit         func([]byte) []byte
	}{
		{"damaged", "checksum mismatch", func(b []byte) []byte { b[len(b)-3] ^= 1; return b }},
		{"missing", "not found", func([]byte) []byte { return nil }},
	} {
		r.edit(key, tc.edit)
		lose()
		reads := r.reads.Load()
		l = mustOpen(t, dir, o)
		rec := l.Recovery()
		if len(rec.FetchedIndexes) != 0 || len(rec.RebuiltIndexes) != 1 || len(rec.IndexBundleFailures) != 1 ||
			!strings.Contains(rec.IndexBundleFailures[0], tc.reason) {
			t.Fatalf("%s bundle: recovery %+v, want a rebuild saying %q", tc.name, rec, tc.reason)
		}
		if r.reads.Load() == reads {
			t.Fatalf("%s bundle: the rebuild did not read the object", tc.name)
		}
		gi, gt, gs := segmentFiles(t, dir, s.BaseOffset)
		if !bytes.Equal(gi, index) || !bytes.Equal(gt, times) || !bytes.Equal(gs, streams) {
			t.Fatalf("%s bundle: rebuilt index files differ from the lost ones", tc.name)
		}
		all, stream := readTiered(t, l)
		if !bytes.Equal(all, wantAll) || !bytes.Equal(stream, wantStream) {
			t.Fatalf("%s bundle: reads after the rebuild differ", tc.name)
		}
		l.Close()
	}

	// Good index files: no fetch, even with the store gone.
	fetched := r.fetched.Load()
	l = mustOpen(t, dir, Options{SegmentBytes: o.SegmentBytes, IndexIntervalBytes: o.IndexIntervalBytes, Remote: &bundleRemote{memRemote: newMemRemote()}})
	if rec := l.Recovery(); len(rec.FetchedIndexes)+len(rec.RebuiltIndexes)+len(rec.IndexBundleFailures) != 0 || r.fetched.Load() != fetched {
		t.Fatalf("Open with good index files: %+v", rec)
	}
	l.Close()
}

// TestIndexBundleRefusesWrongIndex: index files whose entries are in
// order but do not point at the batches they name are refused when the
// .log is local (checked against it), never bundled.
func TestIndexBundleRefusesWrongIndex(t *testing.T) {
	l, _, dir, _ := tieredLog(t)
	s := l.Segments()[1]
	index, _, _ := segmentFiles(t, dir, s.BaseOffset)
	if len(index) < 3*IndexEntrySize {
		t.Fatalf("%d index entries, want at least 3", len(index)/IndexEntrySize)
	}
	bad := bytes.Clone(index)
	bad[IndexEntrySize+7]++ // entry 1's position, still between its neighbours'
	if err := os.WriteFile(filepath.Join(dir, indexName(s.BaseOffset)), bad, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := l.IndexBundle(s.BaseOffset)
	var ce *CorruptionError
	if !errors.As(err, &ce) || ce.Path != filepath.Join(dir, indexName(s.BaseOffset)) || ce.LogDamaged() {
		t.Fatalf("IndexBundle with a wrong index entry: %v, want a *CorruptionError naming the .index file", err)
	}
}

// TestDumpIndexBundle: `tsstore dump` of a bundle file shows the segment
// it names and its sections; a damaged one is an error after printing.
func TestDumpIndexBundle(t *testing.T) {
	x := goldenBundle()
	path := filepath.Join(t.TempDir(), "b"+IndexBundleSuffix)
	if err := os.WriteFile(path, encodeIndexBundle(x), 0o644); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := Dump(path, &out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"index bundle of segment [990, 998), 4190 bytes of .log", "section 1 .index: 16 bytes, 2 entries",
		"section 2 .timeindex: 24 bytes, 2 entries", "section 3 .streams: ", "contents: ok"} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("dump:\n%s\nwant %q", out.String(), want)
		}
	}
	x.Streams = encodeStreams(990, 999, 4190, nil) // framed well, another segment's end
	if err := os.WriteFile(path, encodeIndexBundle(x), 0o644); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if err := Dump(path, &out); !errors.Is(err, ErrCorrupt) || !strings.Contains(out.String(), "contents: BAD: ") {
		t.Fatalf("dump of a bad bundle: %v\n%s", err, out.String())
	}
}
