package segment

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/tsstore/tsstore/record"
)

// memRemote is an in-memory object store for tiered segments.
type memRemote struct {
	mu    sync.Mutex
	objs  map[string][]byte
	reads atomic.Int64
}

func newMemRemote() *memRemote { return &memRemote{objs: map[string][]byte{}} }

func (m *memRemote) Open(key string, size int64) (RemoteObject, error) {
	return &memObject{m: m, key: key}, nil
}

func (m *memRemote) put(key string, b []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.objs[key] = bytes.Clone(b)
}

func (m *memRemote) edit(key string, fn func([]byte) []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if b, ok := m.objs[key]; ok {
		if b = fn(b); b == nil {
			delete(m.objs, key)
		} else {
			m.objs[key] = b
		}
	}
}

type memObject struct {
	m   *memRemote
	key string
}

func (o *memObject) ReadAt(p []byte, off int64) (int, error) {
	o.m.reads.Add(1)
	o.m.mu.Lock()
	defer o.m.mu.Unlock()
	b, ok := o.m.objs[o.key]
	if !ok {
		return 0, fmt.Errorf("%w: %s: not found", ErrRemoteLost, o.key)
	}
	if off >= int64(len(b)) {
		return 0, io.EOF
	}
	n := copy(p, b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (o *memObject) Close() error { return nil }

// tierAll uploads every sealed segment of l to r and evicts it; it
// returns the keys by base offset.
func tierAll(t *testing.T, l *Log, r *memRemote) map[uint64]string {
	t.Helper()
	keys := map[uint64]string{}
	for _, s := range l.Segments() {
		if !s.Sealed || s.Tiered {
			continue
		}
		b, err := os.ReadFile(s.Path)
		if err != nil {
			t.Fatal(err)
		}
		key := fmt.Sprintf("c/segments/%020d.log", s.BaseOffset)
		r.put(key, b)
		if err := l.Evict(s.BaseOffset, RemoteRef{Key: key, Size: int64(len(b)), Checksum: crc32.Checksum(b, castagnoli)}); err != nil {
			t.Fatalf("Evict(%d): %v", s.BaseOffset, err)
		}
		keys[s.BaseOffset] = key
	}
	return keys
}

// readTiered returns the whole log and one stream's batches.
func readTiered(t *testing.T, l *Log) (all, stream []byte) {
	t.Helper()
	all, next, err := l.ReadBatches(nil, l.FirstOffset(), 1<<30)
	if err != nil || next != l.NextOffset() {
		t.Fatalf("ReadBatches: next %d of %d, %v", next, l.NextOffset(), err)
	}
	stream, _, err = l.StreamBatches(nil, "stream-3", 0, 1<<30)
	if err != nil {
		t.Fatalf("StreamBatches: %v", err)
	}
	return all, stream
}

func tieredLog(t *testing.T) (*Log, *memRemote, string, Options) {
	t.Helper()
	dir := t.TempDir()
	r := newMemRemote()
	o := testOptions()
	o.Remote = r
	l := mustOpen(t, dir, o)
	fill(t, l, newMaker(100), 200, 5)
	if n := len(l.Segments()); n < 4 {
		t.Fatalf("%d segments, want several", n)
	}
	return l, r, dir, o
}

// TestEvictThenRead: after eviction the .log files are gone, the marker
// and index files stay, and reads (whole log, one stream, by time)
// return the same bytes, served from the remote; also after a restart,
// which reads nothing of the remote to open.
func TestEvictThenRead(t *testing.T) {
	l, r, dir, o := tieredLog(t)
	wantAll, wantStream := readTiered(t, l)
	wantDigests := map[uint64]uint32{}
	for _, s := range l.Segments()[:len(l.Segments())-1] {
		d, err := l.Digest(s.BaseOffset, false)
		if err != nil {
			t.Fatal(err)
		}
		wantDigests[s.BaseOffset] = d
	}
	keys := tierAll(t, l, r)
	for base, key := range keys {
		for _, name := range []string{FileName(base)} {
			if _, err := os.Stat(filepath.Join(dir, name)); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("%s still there after Evict: %v", name, err)
			}
		}
		for _, name := range []string{tieredName(base), indexName(base), timeIndexName(base), streamsName(base)} {
			if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
		}
		if err := l.Evict(base, RemoteRef{Key: key}); err != nil {
			t.Fatalf("Evict again under the same key: %v", err)
		}
	}
	for _, s := range l.Segments()[:len(l.Segments())-1] {
		if !s.Tiered || s.Key != keys[s.BaseOffset] || !s.DigestKnown || s.Digest != wantDigests[s.BaseOffset] {
			t.Fatalf("segment %+v after Evict: want tiered as %s, digest %08x", s, keys[s.BaseOffset], wantDigests[s.BaseOffset])
		}
	}
	before := r.reads.Load()
	all, stream := readTiered(t, l)
	if !bytes.Equal(all, wantAll) || !bytes.Equal(stream, wantStream) {
		t.Fatal("reads after Evict differ from before")
	}
	if r.reads.Load() == before {
		t.Fatal("reads after Evict did not touch the remote")
	}
	if err := l.Verify(nil); err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	before = r.reads.Load()
	l2 := mustOpen(t, dir, o)
	if got := r.reads.Load(); got != before {
		t.Fatalf("Open read the remote %d times with good index files", got-before)
	}
	all, stream = readTiered(t, l2)
	if !bytes.Equal(all, wantAll) || !bytes.Equal(stream, wantStream) {
		t.Fatal("reads after a restart differ")
	}
	for _, s := range l2.Segments()[:len(l2.Segments())-1] {
		if !s.Tiered || s.Digest != wantDigests[s.BaseOffset] {
			t.Fatalf("segment %+v after restart", s)
		}
	}
	fill(t, l2, newMakerAt(l2), 5, 5)

	l2.Close()

	// Without a Remote (an offline tool) the log opens; reads of tiered
	// segments fail with ErrNoRemote, never fewer batches; Verify skips
	// their bytes.
	l3 := mustOpen(t, dir, testOptions())
	if _, _, err := l3.ReadBatches(nil, 0, 1<<20); !errors.Is(err, ErrNoRemote) {
		t.Fatalf("read without a Remote: %v, want ErrNoRemote", err)
	}
	if err := l3.Verify(nil); err != nil {
		t.Fatalf("Verify without a Remote: %v", err)
	}
	if err := l3.Evict(l3.Segments()[0].BaseOffset, RemoteRef{Key: "k"}); !errors.Is(err, ErrNoRemote) {
		t.Fatalf("Evict without a Remote: %v", err)
	}
}

// newMakerAt continues a log's offsets and timestamps.
func newMakerAt(l *Log) *batchMaker {
	m := newMaker(100)
	h, _ := l.LastHeader()
	m.next, m.raft, m.ts = l.NextOffset(), h.RaftIndex, h.Timestamp
	return m
}

// TestEvictWhileReading: a reader that holds the segment keeps reading
// the local file after Evict removed it.
func TestEvictWhileReading(t *testing.T) {
	l, r, _, _ := tieredLog(t)
	base := l.Segments()[0].BaseOffset
	rd, err := l.OpenSealed(base)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	want := make([]byte, rd.Info().Size)
	if _, err := rd.ReadAt(want, 0); err != nil {
		t.Fatal(err)
	}
	tierAll(t, l, r)
	r.edit(fmt.Sprintf("c/segments/%020d.log", base), func([]byte) []byte { return nil })
	got := make([]byte, len(want))
	if _, err := rd.ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("the held reader after Evict: %v", err)
	}
	// New readers go to the remote, where the object is gone.
	if _, _, err := l.ReadBatches(nil, base, 1<<20); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("read of a missing object: %v, want corruption", err)
	}
}

// TestTieredObjectDamage: a missing, short or flipped object fails reads
// with a *CorruptionError naming the key; nothing is served.
func TestTieredObjectDamage(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func([]byte) []byte
	}{
		{"missing", func([]byte) []byte { return nil }},
		{"short", func(b []byte) []byte { return b[:len(b)-10] }},
		{"flipped", func(b []byte) []byte { b[len(b)/2] ^= 0x40; return b }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, r, _, _ := tieredLog(t)
			keys := tierAll(t, l, r)
			s := l.Segments()[1]
			r.edit(keys[s.BaseOffset], tc.edit)
			check := func(what string, err error) {
				t.Helper()
				var ce *CorruptionError
				if !errors.As(err, &ce) || ce.Key != keys[s.BaseOffset] {
					t.Fatalf("%s: %v, want a CorruptionError naming %s", what, err, keys[s.BaseOffset])
				}
				if _, ok := CorruptSegment(err); ok {
					t.Fatalf("%s: %v names a local file to repair", what, err)
				}
			}
			out, next, err := l.ReadBatches(nil, s.BaseOffset, 1<<30)
			check("ReadBatches", err)
			if next > s.NextOffset || int64(len(out)) > s.Size {
				t.Fatalf("ReadBatches served %d bytes up to %d of a damaged segment", len(out), next)
			}
			// A stream read fetches only its batches: the damage hits some
			// streams, and each of those fails.
			failed := 0
			for k := range 7 {
				if _, _, err := l.StreamBatches(nil, fmt.Sprintf("stream-%d", k), s.BaseOffset, 1<<30); err != nil {
					check("StreamBatches", err)
					failed++
				}
			}
			if failed == 0 {
				t.Fatal("no stream read saw the damage")
			}
			check("Verify", l.Verify(nil))
			_, err = l.Digest(s.BaseOffset, true)
			if tc.name != "flipped" {
				check("Digest", err)
			}
		})
	}
}

// TestEvictRefusesMismatch: an object of another size or checksum is
// refused and the local copy stays.
func TestEvictRefusesMismatch(t *testing.T) {
	l, r, dir, _ := tieredLog(t)
	s := l.Segments()[0]
	b, _ := os.ReadFile(s.Path)
	sum := crc32.Checksum(b, castagnoli)
	for _, ref := range []RemoteRef{{Key: "k", Size: s.Size + 1, Checksum: sum}, {Key: "k", Size: s.Size, Checksum: sum + 1}} {
		if err := l.Evict(s.BaseOffset, ref); !errors.Is(err, ErrRemoteMismatch) {
			t.Fatalf("Evict(%+v): %v, want ErrRemoteMismatch", ref, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, FileName(s.BaseOffset))); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, tieredName(s.BaseOffset))); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("marker after a refused Evict: %v", err)
	}
	if err := l.Evict(l.ActiveBase(), RemoteRef{Key: "k"}); !errors.Is(err, ErrNotSealed) {
		t.Fatalf("Evict of the active segment: %v", err)
	}
	_ = r
}

// TestTieredRecovery: a marker beside its .log (a crash inside Evict) is
// removed; lost index files of a tiered segment are rebuilt from the
// object; a dropped tiered segment leaves no marker or index files.
func TestTieredRecovery(t *testing.T) {
	l, r, dir, o := tieredLog(t)
	wantAll, wantStream := readTiered(t, l)
	segs := l.Segments()
	first, second := segs[0], segs[1]
	keep, _ := os.ReadFile(first.Path)
	tierAll(t, l, r)
	l.Close()
	// first: as if the crash came before the .log's removal.
	if err := os.WriteFile(filepath.Join(dir, FileName(first.BaseOffset)), keep, 0o644); err != nil {
		t.Fatal(err)
	}
	// second: index files lost.
	for _, name := range []string{indexName(second.BaseOffset), streamsName(second.BaseOffset)} {
		os.Remove(filepath.Join(dir, name))
	}
	l2 := mustOpen(t, dir, o)
	rec := l2.Recovery()
	if len(rec.RemovedMarkers) != 1 || len(rec.RebuiltIndexes) != 1 {
		t.Fatalf("recovery %+v: want one marker removed, one index rebuilt", rec)
	}
	got := l2.Segments()
	if got[0].Tiered || !got[1].Tiered {
		t.Fatalf("after recovery: first tiered %v, second %v", got[0].Tiered, got[1].Tiered)
	}
	all, stream := readTiered(t, l2)
	if !bytes.Equal(all, wantAll) || !bytes.Equal(stream, wantStream) {
		t.Fatal("reads after recovery differ")
	}
	if _, err := l2.DropSealedBefore(got[1].NextOffset); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{tieredName(second.BaseOffset), indexName(second.BaseOffset), timeIndexName(second.BaseOffset), streamsName(second.BaseOffset)} {
		if _, err := os.Stat(filepath.Join(dir, name)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s after the drop: %v", name, err)
		}
	}
	if err := l2.ReplaceSealed(got[2].BaseOffset, bytes.NewReader(nil)); !errors.Is(err, ErrTiered) {
		t.Fatalf("ReplaceSealed of a tiered segment: %v", err)
	}
}

// TestMarkerRoundTrip: the marker decodes to what was encoded, and any
// flipped byte is refused.
func TestMarkerRoundTrip(t *testing.T) {
	m := newMaker(10)
	b := m.batch(t, 3)
	mk := &marker{base: 0, size: 4096, sum: 0xdeadbeef, firstTS: 7, last: b.Header(), key: "c/segments/x.log"}
	copy(mk.lastRaw[:], b[:len(mk.lastRaw)])
	enc := encodeMarker(mk)
	got, err := decodeMarker(enc, 0)
	if err != nil || got.key != mk.key || got.size != mk.size || got.sum != mk.sum || got.firstTS != 7 || got.last != mk.last {
		t.Fatalf("decode: %+v, %v", got, err)
	}
	for i := range enc {
		c := bytes.Clone(enc)
		c[i] ^= 1
		if _, err := decodeMarker(c, 0); err == nil {
			t.Fatalf("a flip at byte %d decodes", i)
		}
	}
	if _, err := decodeMarker(enc, 5); err == nil {
		t.Fatal("the marker of base 0 decodes as base 5's")
	}
}

// TestMarkerGolden pins the frozen marker format: a fixed marker encodes
// to testdata/tiered.golden (a hex dump) byte for byte.
func TestMarkerGolden(t *testing.T) {
	var b record.Builder
	b.Reset(1000, 42, 1_700_000_000_000_000_000, 0)
	if err := b.Add(&record.Record{Stream: []byte("run/1"), StreamVersion: 7, Type: []byte("Step"), Payload: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	batch, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	mk := &marker{base: 990, size: 65536, sum: 0x01020304, firstTS: 1_699_999_999_000_000_000, last: batch.Header(),
		key: "c1/segments/00000000000000000990-00000000000000001001-t3-0011223344556677.log"}
	copy(mk.lastRaw[:], batch[:record.HeaderSize])
	got := []byte(hex.Dump(encodeMarker(mk)))
	golden := filepath.Join("testdata", "tiered.golden")
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
		t.Fatalf("marker bytes differ from %s (a frozen format):\n%s", golden, got)
	}
}

// FuzzDecodeMarker: any bytes either decode to a marker that encodes
// back to the same bytes, or are refused; never a panic.
func FuzzDecodeMarker(f *testing.F) {
	m := newMaker(10)
	b := m.batch(f, 3)
	mk := &marker{base: 0, size: 4096, sum: 7, firstTS: 1, last: b.Header(), key: "k/x.log"}
	copy(mk.lastRaw[:], b[:record.HeaderSize])
	enc := encodeMarker(mk)
	f.Add(enc)
	f.Add(enc[:len(enc)-1])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, p []byte) {
		got, err := decodeMarker(p, 0)
		if err != nil {
			return
		}
		if re := encodeMarker(got); !bytes.Equal(re, p) {
			t.Fatalf("decoded marker re-encodes to other bytes:\n%x\n%x", p, re)
		}
	})
}

// TestEvictUnderConcurrentReads: readers replaying the whole log and one
// stream while every sealed segment is evicted always get the same bytes
// (run with -race).
func TestEvictUnderConcurrentReads(t *testing.T) {
	l, r, _, _ := tieredLog(t)
	wantAll, wantStream := readTiered(t, l)
	stop := make(chan struct{})
	errs := make(chan error, 4)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				all, _, err := l.ReadBatches(nil, 0, 1<<30)
				if err == nil && !bytes.Equal(all, wantAll) {
					err = errors.New("whole-log read differs")
				}
				if err == nil {
					var stream []byte
					stream, _, err = l.StreamBatches(nil, "stream-3", 0, 1<<30)
					if err == nil && !bytes.Equal(stream, wantStream) {
						err = errors.New("stream read differs")
					}
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	tierAll(t, l, r)
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("a reader during eviction: %v", err)
	}
}

// prefetchObject counts the prefetch hints it gets.
type prefetchObject struct {
	memObject
	hints *atomic.Int64
}

func (p prefetchObject) Prefetch(int64) { p.hints.Add(1) }

type prefetchRemote struct {
	*memRemote
	hints atomic.Int64
}

func (r *prefetchRemote) Open(key string, size int64) (RemoteObject, error) {
	return &prefetchObject{memObject{m: r.memRemote, key: key}, &r.hints}, nil
}

// TestReadHintsNextTieredSegment: a whole-log read that enters a tiered
// segment hints the next tiered segment to start fetching; the active
// segment is never hinted.
func TestReadHintsNextTieredSegment(t *testing.T) {
	dir := t.TempDir()
	r := &prefetchRemote{memRemote: newMemRemote()}
	o := testOptions()
	o.Remote = r
	l := mustOpen(t, dir, o)
	fill(t, l, newMaker(100), 200, 5)
	tierAll(t, l, r.memRemote)
	tiered := len(l.Segments()) - 1
	if _, _, err := l.ReadBatches(nil, 0, 1<<30); err != nil {
		t.Fatal(err)
	}
	if got := r.hints.Load(); got != int64(tiered-1) {
		t.Fatalf("%d hints for %d tiered segments, want %d (each but the last hints its successor)", got, tiered, tiered-1)
	}
}

// TestDumpTiered: `tsstore dump` of a marker shows the segment's range,
// size, checksum and object key.
func TestDumpTiered(t *testing.T) {
	l, r, dir, _ := tieredLog(t)
	keys := tierAll(t, l, r)
	s := l.Segments()[1]
	var out bytes.Buffer
	if err := Dump(filepath.Join(dir, tieredName(s.BaseOffset)), &out); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("tiered segment [%d, %d), %d bytes, crc32c %08x", s.BaseOffset, s.NextOffset, s.Size, s.Digest)
	if !strings.Contains(out.String(), want) || !strings.Contains(out.String(), "object "+keys[s.BaseOffset]) {
		t.Fatalf("dump:\n%s\nwant %q and the key", out.String(), want)
	}
}

// TestReadToStopsBeforeTheNextSegment: a read bounded by end never reads
// a segment that starts at or after end, so a damaged tiered object there
// neither fails it nor is fetched (jepsen's tiering scenario found reads
// of healthy ranges failing with DataLoss naming the next segment's
// deleted object). Unbounded, the same read reaches the damage.
func TestReadToStopsBeforeTheNextSegment(t *testing.T) {
	l, r, _, _ := tieredLog(t)
	keys := tierAll(t, l, r)
	segs := l.Segments()
	s, bad := segs[1], segs[2]
	r.edit(keys[bad.BaseOffset], func([]byte) []byte { return nil })

	out, next, err := l.ReadBatchesTo(nil, s.BaseOffset, s.NextOffset, 1<<30)
	if err != nil || next != s.NextOffset || int64(len(out)) != s.Size {
		t.Fatalf("ReadBatchesTo [%d, %d): %d bytes up to %d, %v; want the segment's %d bytes", s.BaseOffset, s.NextOffset, len(out), next, err, s.Size)
	}
	if _, _, err := l.ReadBatches(nil, s.BaseOffset, 1<<30); err == nil {
		t.Fatal("an unbounded read past the deleted object succeeded")
	}
	// A bound inside the segment: no further either.
	if _, next, err := l.ReadBatchesTo(nil, s.BaseOffset, s.BaseOffset+1, 1<<30); err != nil || next > s.NextOffset {
		t.Fatalf("ReadBatchesTo inside the segment: next %d, %v", next, err)
	}
	for k := range 7 {
		stream := fmt.Sprintf("stream-%d", k)
		_, next, err := l.StreamBatchesTo(nil, stream, s.BaseOffset, s.NextOffset, 1<<30)
		if err != nil || next > s.NextOffset {
			t.Fatalf("StreamBatchesTo %s [%d, %d): next %d, %v", stream, s.BaseOffset, s.NextOffset, next, err)
		}
	}
	// Nothing is hinted past the bound either.
	pr := &prefetchRemote{memRemote: newMemRemote()}
	o := testOptions()
	o.Remote = pr
	l2 := mustOpen(t, t.TempDir(), o)
	fill(t, l2, newMaker(100), 200, 5)
	tierAll(t, l2, pr.memRemote)
	s2 := l2.Segments()[1]
	if _, _, err := l2.ReadBatchesTo(nil, s2.BaseOffset, s2.NextOffset, 1<<30); err != nil {
		t.Fatal(err)
	}
	if got := pr.hints.Load(); got != 0 {
		t.Fatalf("%d prefetch hints for a read that ends with its segment, want 0", got)
	}
}
