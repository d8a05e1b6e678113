package segment

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/tsstore/tsstore/record"
)

// streamMaker builds batches that mix streams the way an event store does:
// most batches hold one stream, some several, a few hold records outside
// any stream (empty name or version 0, which are not indexed). Versions
// count up per stream, as the FSM assigns them.
type streamMaker struct {
	b        record.Builder
	rng      *rand.Rand
	next     uint64
	raft     uint64
	ts       int64
	versions map[string]uint64
	names    []string // weighted: earlier names are hotter
}

func newStreamMaker(seed uint64) *streamMaker {
	return &streamMaker{
		rng:      rand.New(rand.NewPCG(seed, 1)),
		ts:       m0ts,
		versions: make(map[string]uint64),
		names:    []string{"hot", "warm", "cool", "cold-1", "cold-2", "cold-3", "rare"},
	}
}

// pick returns a stream name, "hot" most often and "rare" seldom.
func (m *streamMaker) pick() string {
	for i, n := range m.names[:len(m.names)-1] {
		if m.rng.IntN(3) == 0 || i == len(m.names)-2 && m.rng.IntN(50) != 0 {
			return n
		}
	}
	return m.names[len(m.names)-1]
}

func (m *streamMaker) batch(t testing.TB) record.Batch {
	t.Helper()
	m.raft++
	m.ts += 1000
	m.b.Reset(m.next, m.raft, m.ts, 0)
	n := 1 + m.rng.IntN(6)
	streams := []string{m.pick()}
	if m.rng.IntN(4) == 0 {
		streams = append(streams, m.pick())
	}
	for i := range n {
		r := record.Record{Type: []byte("E"), Payload: bytes.Repeat([]byte{'p'}, 20+m.rng.IntN(200))}
		switch x := m.rng.IntN(40); {
		case x == 0: // no stream
		case x == 1: // a stream name but no version: not indexed
			r.Stream = []byte(streams[0])
		default:
			s := streams[i%len(streams)]
			m.versions[s]++
			r.Stream, r.StreamVersion = []byte(s), m.versions[s]
		}
		if err := m.b.Add(&r); err != nil {
			t.Fatal(err)
		}
	}
	if m.rng.IntN(10) == 0 {
		m.b.ExtendSpan(uint64(n + 2)) // a span with offsets no record holds
	}
	b, err := m.b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	m.next = b.Header().NextOffset()
	return bytes.Clone(b)
}

func (m *streamMaker) fill(t testing.TB, l *Log, n int) []record.Batch {
	t.Helper()
	out := make([]record.Batch, 0, n)
	for range n {
		b := m.batch(t)
		if err := l.Append(b); err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

// hasStream reports whether b holds an indexed record of stream.
func hasStream(b record.Batch, stream string) bool {
	it := b.Records()
	var r record.Record
	for it.Next(&r) {
		if r.StreamVersion > 0 && string(r.Stream) == stream {
			return true
		}
	}
	return false
}

// expectStream is StreamBatches by brute force over every batch.
func expectStream(all []record.Batch, stream string, from uint64, maxBytes int) (out []byte, next uint64) {
	end := uint64(0)
	if len(all) > 0 {
		end = all[len(all)-1].Header().NextOffset()
	}
	for _, b := range all {
		h := b.Header()
		if h.NextOffset() <= from || !hasStream(b, stream) {
			continue
		}
		if len(out) > 0 && len(out)+len(b) > maxBytes {
			return out, next
		}
		out, next = append(out, b...), h.NextOffset()
	}
	return out, max(end, from)
}

// expectOffset is StreamOffset by brute force.
func expectOffset(all []record.Batch, stream string, version uint64) (uint64, bool) {
	for _, b := range all {
		it := b.Records()
		var r record.Record
		for it.Next(&r) {
			if r.StreamVersion > 0 && r.StreamVersion >= version && string(r.Stream) == stream {
				return r.Offset, true
			}
		}
	}
	return 0, false
}

var testStreams = []string{"hot", "warm", "cold-2", "rare", "absent", ""}

// checkStreamReads compares StreamBatches and StreamOffset with brute force
// for every stream, from many offsets, with several budgets.
func checkStreamReads(t *testing.T, l *Log, all []record.Batch) {
	t.Helper()
	end := l.NextOffset()
	froms := []uint64{0, 1, 2, end / 3, end/2 + 1, end - 1, end, end + 5}
	for i := 0; i < len(all); i += 17 {
		h := all[i].Header()
		froms = append(froms, h.BaseOffset, h.LastOffset(), h.NextOffset())
	}
	var buf []byte
	for _, stream := range testStreams {
		for _, from := range froms {
			for _, maxBytes := range []int{0, 700, 4000, math.MaxInt} {
				var next uint64
				var err error
				buf, next, err = l.StreamBatches(buf[:0], stream, from, maxBytes)
				want, wantNext := expectStream(all, stream, from, maxBytes)
				if err != nil || next != wantNext || !bytes.Equal(buf, want) {
					t.Fatalf("StreamBatches(%q, %d, %d) = %d bytes, next %d, %v; want %d bytes, next %d",
						stream, from, maxBytes, len(buf), next, err, len(want), wantNext)
				}
			}
		}
	}
	for _, stream := range testStreams {
		for v := uint64(0); v <= l.streamMaxVersion(stream)+2; v++ {
			got, ok, err := l.StreamOffset(stream, v)
			want, wantOK := expectOffset(all, stream, v)
			if err != nil || ok != wantOK || got != want {
				t.Fatalf("StreamOffset(%q, %d) = %d, %v, %v; want %d, %v", stream, v, got, ok, err, want, wantOK)
			}
		}
	}
}

// streamMaxVersion is the largest version of stream in the log, from the
// index; the brute-force comparisons check it indirectly.
func (l *Log) streamMaxVersion(stream string) uint64 {
	l.mu.RLock()
	defer l.mu.RUnlock()
	var v uint64
	for _, s := range l.mu.segs {
		if sv, ok := s.streamSegLocked(stream); ok {
			v = max(v, sv.maxVer)
		}
	}
	return v
}

// TestStreamBatchesBruteForce interleaves streams across many segment
// rolls and checks every answer against a scan of every batch: on the
// live log (sealed segments from .streams files, the active one from
// memory), after reopening, and after more appends.
func TestStreamBatchesBruteForce(t *testing.T) {
	dir := t.TempDir()
	o := testOptions()
	l := mustOpen(t, dir, o)
	m := newStreamMaker(1)
	all := m.fill(t, l, 600)
	if n := len(l.Segments()); n < 10 {
		t.Fatalf("only %d segments", n)
	}
	checkStreamReads(t, l, all)
	if err := l.Verify(nil); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = mustOpen(t, dir, o)
	if r := l.Recovery(); len(r.RebuiltIndexes) != 0 {
		t.Fatalf("clean reopen rebuilt %v", r.RebuiltIndexes)
	}
	checkStreamReads(t, l, all)
	all = append(all, m.fill(t, l, 150)...)
	checkStreamReads(t, l, all)
	if err := l.Verify(nil); err != nil {
		t.Fatal(err)
	}
}

// TestStreamBatchesResume follows streams with small budgets while the
// writer appends and rolls between calls: resuming from next must yield
// each batch of the stream exactly once.
func TestStreamBatchesResume(t *testing.T) {
	l := mustOpen(t, t.TempDir(), testOptions())
	m := newStreamMaker(2)
	all := m.fill(t, l, 50)
	for _, stream := range []string{"hot", "cool", "rare"} {
		var got []byte
		var buf []byte
		from := uint64(0)
		for i := range 400 {
			var err error
			var next uint64
			buf, next, err = l.StreamBatches(buf[:0], stream, from, 1+i%3*600)
			if err != nil {
				t.Fatal(err)
			}
			if next < from || (len(buf) == 0 && next != max(from, l.NextOffset())) {
				t.Fatalf("from %d: next %d, %d bytes, log ends at %d", from, next, len(buf), l.NextOffset())
			}
			for _, b := range splitBatches(t, buf) {
				if b.Header().BaseOffset < from || !hasStream(b, stream) {
					t.Fatalf("batch at %d returned reading %q from %d", b.Header().BaseOffset, stream, from)
				}
			}
			got = append(got, buf...)
			from = next
			if i%2 == 0 {
				all = append(all, m.fill(t, l, 1+i%4)...)
			}
		}
		// Drain, then compare with everything ever appended.
		for from < l.NextOffset() {
			var err error
			buf, from, err = l.StreamBatches(buf[:0], stream, from, math.MaxInt)
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, buf...)
		}
		want, _ := expectStream(all, stream, 0, math.MaxInt)
		if !bytes.Equal(got, want) {
			t.Fatalf("stream %q: followed %d batches, want %d", stream, len(splitBatches(t, got)), len(splitBatches(t, want)))
		}
	}
	if n := len(l.Segments()); n < 10 {
		t.Fatalf("only %d segments", n)
	}
}

func TestStreamReadErrors(t *testing.T) {
	dir := t.TempDir()
	l := mustOpen(t, dir, testOptions())
	m := newStreamMaker(3)
	m.fill(t, l, 200)
	segs := l.Segments()
	l.Close()
	os.Remove(segs[0].Path) // retention by hand, as in TestReadBatchesCompacted
	l = mustOpen(t, dir, testOptions())
	_, _, err := l.StreamBatches(nil, "hot", 0, 1<<20)
	var oce *OffsetCompactedError
	if !errors.As(err, &oce) || oce.FirstOffset != segs[1].BaseOffset {
		t.Fatalf("StreamBatches below first = %v", err)
	}
	out, next, err := l.StreamBatches(nil, "hot", segs[1].BaseOffset, 1<<20)
	if err != nil || len(out) == 0 || next == 0 {
		t.Fatalf("StreamBatches from first = %d bytes, %d, %v", len(out), next, err)
	}
	if _, ok, err := l.StreamOffset("hot", 1); err != nil || !ok {
		t.Fatalf("StreamOffset on a compacted log = %v, %v", ok, err)
	}
	l.Close()
	if _, _, err := l.StreamBatches(nil, "hot", segs[1].BaseOffset, 1<<20); !errors.Is(err, ErrClosed) {
		t.Fatalf("StreamBatches after Close = %v", err)
	}
	if _, _, err := l.StreamOffset("hot", 1); !errors.Is(err, ErrClosed) {
		t.Fatalf("StreamOffset after Close = %v", err)
	}
}

func TestStreamsEmptyLog(t *testing.T) {
	l := mustOpen(t, t.TempDir(), testOptions())
	out, next, err := l.StreamBatches([]byte("keep"), "x", 0, 1<<20)
	if err != nil || string(out) != "keep" || next != 0 {
		t.Fatalf("StreamBatches = %q, %d, %v", out, next, err)
	}
	if _, ok, err := l.StreamOffset("x", 1); ok || err != nil {
		t.Fatalf("StreamOffset = %v, %v", ok, err)
	}
}

// TestAppendRefusesBadRecords: a batch whose CRC is right but whose records
// do not decode would be cut off by the next Open; Append refuses it.
func TestAppendRefusesBadRecords(t *testing.T) {
	l := mustOpen(t, t.TempDir(), testOptions())
	b := bytes.Clone(newMaker(10).batch(t, 2))
	b[record.HeaderSize] = 0xff // first record's length varint
	binary := record.Checksum(b)
	b[12], b[13], b[14], b[15] = byte(binary>>24), byte(binary>>16), byte(binary>>8), byte(binary)
	if err := l.Append(b); !errors.Is(err, ErrInvalidBatch) {
		t.Fatalf("Append = %v", err)
	}
	if l.NextOffset() != 0 {
		t.Fatal("log changed")
	}
}

// TestStreamOffsetUnordered: versions that go backwards (the FSM never
// writes them, but the format allows them) make lookups scan instead of
// bisect, and still find the first match.
func TestStreamOffsetUnordered(t *testing.T) {
	dir := t.TempDir()
	l := mustOpen(t, dir, testOptions())
	var all []record.Batch
	var bl record.Builder
	versions := []uint64{5, 6, 1, 2, 9, 3, 10, 4, 7, 8}
	for i := range 300 {
		bl.Reset(l.NextOffset(), uint64(i+1), m0ts, 0)
		v := versions[i%len(versions)] + uint64(i/len(versions))*10
		for _, r := range []record.Record{
			{Stream: []byte("u"), StreamVersion: v, Payload: make([]byte, 100)},
			{Stream: []byte("o"), StreamVersion: uint64(i + 1), Payload: make([]byte, 100)},
		} {
			if err := bl.Add(&r); err != nil {
				t.Fatal(err)
			}
		}
		b, _ := bl.Finish()
		b = bytes.Clone(b)
		if err := l.Append(b); err != nil {
			t.Fatal(err)
		}
		all = append(all, b)
	}
	check := func() {
		t.Helper()
		for _, stream := range []string{"u", "o"} {
			for v := uint64(0); v < 305; v++ {
				got, ok, err := l.StreamOffset(stream, v)
				want, wantOK := expectOffset(all, stream, v)
				if err != nil || ok != wantOK || got != want {
					t.Fatalf("StreamOffset(%q, %d) = %d, %v, %v; want %d, %v", stream, v, got, ok, err, want, wantOK)
				}
			}
		}
	}
	check()
	l.Close()
	l = mustOpen(t, dir, testOptions())
	check()
	var dump bytes.Buffer
	if err := Dump(filepath.Join(dir, streamsName(0)), &dump); err != nil || !strings.Contains(dump.String(), "out of order") {
		t.Fatalf("Dump: %v\n%s", err, dump.String())
	}
}

// TestStreamsRebuilt damages or removes .streams files and checks that
// Open rebuilds them byte for byte.
func TestStreamsRebuilt(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, dir, path string)
	}{
		{"missing", func(t *testing.T, dir, p string) { os.Remove(p) }},
		{"empty", func(t *testing.T, dir, p string) { os.WriteFile(p, nil, 0o644) }},
		{"truncated", func(t *testing.T, dir, p string) {
			fi, _ := os.Stat(p)
			os.Truncate(p, fi.Size()-3)
		}},
		{"header bit", func(t *testing.T, dir, p string) { flipByte(t, p, 20) }},
		{"directory bit", func(t *testing.T, dir, p string) { flipByte(t, p, StreamsHeaderSize+3) }},
		{"another segment's", func(t *testing.T, dir, p string) {
			data, _ := os.ReadFile(strings.Replace(p, streamsName(0), streamsName(segBase(t, dir, 1)), 1))
			os.WriteFile(p, data, 0o644)
		}},
		{"every segment (older data)", func(t *testing.T, dir, p string) {
			ms, _ := filepath.Glob(filepath.Join(dir, "*"+StreamsSuffix))
			for _, m := range ms {
				os.Remove(m)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			l := mustOpen(t, dir, testOptions())
			all := newStreamMaker(4).fill(t, l, 200)
			l.Close()
			ms, _ := filepath.Glob(filepath.Join(dir, "*"+StreamsSuffix))
			if len(ms) < 3 {
				t.Fatalf("%d .streams files", len(ms))
			}
			good := make(map[string][]byte)
			for _, p := range ms {
				good[p], _ = os.ReadFile(p)
			}
			p := filepath.Join(dir, streamsName(0))
			tc.damage(t, dir, p)
			l = mustOpen(t, dir, testOptions())
			r := l.Recovery()
			if len(r.RebuiltIndexes) == 0 || r.RebuiltIndexes[0] != filepath.Join(dir, FileName(0)) {
				t.Fatalf("Recovery = %+v", r)
			}
			for _, p := range ms {
				if got, _ := os.ReadFile(p); !bytes.Equal(got, good[p]) {
					t.Fatalf("rebuilt %s differs from the original", p)
				}
			}
			if err := l.Verify(nil); err != nil {
				t.Fatal(err)
			}
			checkStreamReads(t, l, all)
		})
	}
}

func segBase(t *testing.T, dir string, i int) uint64 {
	t.Helper()
	ms, _ := filepath.Glob(filepath.Join(dir, "*"+LogSuffix))
	base, err := parseLogName(filepath.Base(ms[i]))
	if err != nil {
		t.Fatal(err)
	}
	return base
}

// TestStreamsEntryCorruption flips a bit in the entries of a .streams
// file. Open checks only the header and directory, so the reader that
// meets the block must report it, naming the file; Verify must too.
// Removing the file and reopening repairs it.
func TestStreamsEntryCorruption(t *testing.T) {
	dir := t.TempDir()
	l := mustOpen(t, dir, testOptions())
	all := newStreamMaker(5).fill(t, l, 200)
	l.Close()
	p := filepath.Join(dir, streamsName(0))
	data, _ := os.ReadFile(p)
	sf, err := decodeStreamsFile(data)
	if err != nil {
		t.Fatal(err)
	}
	d, _ := lookupStream(sf.dirs, "hot")
	pos := StreamsHeaderSize + int64(sf.header.dirSize) + int64(d.first)*StreamEntrySize + 5
	flipByte(t, p, pos)

	l = mustOpen(t, dir, testOptions())
	checkCorrupt := func(what string, err error) {
		t.Helper()
		var ce *CorruptionError
		if !errors.As(err, &ce) || ce.Path != p || !errors.Is(err, ErrCorrupt) {
			t.Fatalf("%s: %v, want a CorruptionError in %s", what, err, p)
		}
	}
	out, _, err := l.StreamBatches(nil, "hot", 0, math.MaxInt)
	checkCorrupt("StreamBatches", err)
	if len(out) != 0 {
		t.Fatalf("StreamBatches returned %d bytes with the error", len(out))
	}
	_, _, err = l.StreamOffset("hot", 1)
	checkCorrupt("StreamOffset", err)
	checkCorrupt("Verify", l.Verify(nil))
	if _, err := decodeStreamsFile(mustRead(t, p)); err == nil {
		t.Fatal("decodeStreamsFile accepted a damaged file")
	}
	l.Close()
	os.Remove(p)
	l = mustOpen(t, dir, testOptions())
	if !bytes.Equal(mustRead(t, p), data) {
		t.Fatal("rebuilt file differs")
	}
	checkStreamReads(t, l, all)
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// TestStreamsFileStale: a .streams file whose header matches the .log but
// whose entries point at the wrong batches (a bug, or a file from another
// life that passes every cheap check) is caught by the reader's check of
// each batch against its entry, and by Verify.
func TestStreamsFileStale(t *testing.T) {
	dir := t.TempDir()
	l := mustOpen(t, dir, testOptions())
	newStreamMaker(6).fill(t, l, 200)
	l.Close()
	p := filepath.Join(dir, streamsName(0))
	sf, err := decodeStreamsFile(mustRead(t, p))
	if err != nil {
		t.Fatal(err)
	}
	set := make(map[string]*liveStream)
	for _, d := range sf.dirs {
		ls := &liveStream{entries: slices.Clone(sf.entries[d.first : d.first+d.count])}
		ls.maxVer, ls.unordered = d.maxVer, d.flags&streamFlagUnordered != 0
		set[d.name] = ls
	}
	hot := set["hot"]
	hot.entries[0].size++ // still passes every structural check
	os.WriteFile(p, encodeStreams(sf.header.base, sf.header.next, int64(sf.header.logSize), set), 0o644)

	l = mustOpen(t, dir, testOptions())
	var ce *CorruptionError
	if _, _, err := l.StreamBatches(nil, "hot", 0, math.MaxInt); !errors.As(err, &ce) || ce.Path != p {
		t.Fatalf("StreamBatches = %v", err)
	}
	if err := l.Verify(nil); !errors.As(err, &ce) || ce.Path != p {
		t.Fatalf("Verify = %v", err)
	}
}

// TestConcurrentStreamReaders follows streams with StreamBatches and
// looks up versions while the writer appends and rolls. Run with -race.
func TestConcurrentStreamReaders(t *testing.T) {
	l := mustOpen(t, t.TempDir(), testOptions())
	m := newStreamMaker(7)
	const total = 1500
	var amu sync.Mutex
	var all []record.Batch
	snapshot := func() []record.Batch {
		amu.Lock()
		defer amu.Unlock()
		return slices.Clone(all)
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i, stream := range []string{"hot", "warm", "rare", "hot"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := followStream(l, done, stream, []int{0, 900, 5000, 1 << 20}[i], snapshot); err != nil {
				errs <- err
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for v := uint64(1); ; v++ {
			select {
			case <-done:
				return
			default:
			}
			off, ok, err := l.StreamOffset("warm", v%200+1)
			if err != nil {
				errs <- err
				return
			}
			if ok {
				want, wantOK := expectOffset(snapshot(), "warm", v%200+1)
				if !wantOK || off != want {
					// The log may have grown between the two calls, but an
					// answer once found never changes.
					errs <- fmt.Errorf("StreamOffset(warm, %d) = %d, brute force %d %v", v%200+1, off, want, wantOK)
					return
				}
			}
		}
	}()
	for i := range total {
		b := m.batch(t)
		amu.Lock()
		all = append(all, b)
		amu.Unlock()
		if err := l.Append(b); err != nil {
			t.Fatal(err)
		}
		if i%100 == 0 {
			if err := l.Sync(); err != nil {
				t.Fatal(err)
			}
		}
	}
	close(done)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := len(l.Segments()); n < 10 {
		t.Fatalf("only %d segments", n)
	}
	if err := l.Verify(nil); err != nil {
		t.Fatal(err)
	}
}

// followStream reads stream from offset 0 like a tailing client until done
// is closed and it has caught up, then compares what it got with brute
// force over everything appended.
func followStream(l *Log, done <-chan struct{}, stream string, maxBytes int, appended func() []record.Batch) error {
	var buf, got []byte
	var from uint64
	for {
		select {
		case <-done:
			if from == l.NextOffset() {
				want, _ := expectStream(appended(), stream, 0, math.MaxInt)
				if !bytes.Equal(got, want) {
					return fmt.Errorf("followed %q: %d bytes, want %d", stream, len(got), len(want))
				}
				return nil
			}
		default:
		}
		var err error
		var next uint64
		buf, next, err = l.StreamBatches(buf[:0], stream, from, maxBytes)
		if err != nil {
			return err
		}
		if next < from {
			return fmt.Errorf("next %d before from %d", next, from)
		}
		for rest := buf; len(rest) > 0; {
			b, r, err := record.Next(rest)
			if err != nil {
				return err
			}
			if b.Header().BaseOffset < from {
				return fmt.Errorf("batch at %d returned from %d", b.Header().BaseOffset, from)
			}
			rest = r
		}
		got = append(got, buf...)
		from = next
	}
}

// TestStreamsGolden pins the .streams layout: a two-segment log with mixed
// streams, dumped, compared with testdata/streams.golden.
func TestStreamsGolden(t *testing.T) {
	dir := t.TempDir()
	o := testOptions()
	o.SegmentBytes = MinSegmentBytes
	l := mustOpen(t, dir, o)
	var bl record.Builder
	for i := range 40 {
		bl.Reset(l.NextOffset(), uint64(i+1), m0ts+int64(i), 0)
		for j, s := range []string{"orders-1", "orders-2", "", "orders-1"}[:1+i%4] {
			r := record.Record{Stream: []byte(s), StreamVersion: uint64(i*2 + j + 1), Type: []byte("T"), Payload: make([]byte, 60)}
			if err := bl.Add(&r); err != nil {
				t.Fatal(err)
			}
		}
		b, _ := bl.Finish()
		if err := l.Append(b); err != nil {
			t.Fatal(err)
		}
	}
	if len(l.Segments()) < 2 {
		t.Fatal("want a sealed segment")
	}
	var got bytes.Buffer
	if err := Dump(filepath.Join(dir, streamsName(0)), &got); err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "streams.golden")
	if *update {
		if err := os.WriteFile(golden, got.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if !bytes.Equal(got.Bytes(), want) {
		t.Fatalf("Dump output differs from %s (run with -update to accept):\n%s", golden, got.String())
	}
}
