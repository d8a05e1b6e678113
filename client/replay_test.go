package client

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/tsstore/tsstore/proto/tsstorev1"
	"github.com/tsstore/tsstore/record"
)

// batchSpec describes one test batch: records at base+deltas[i] (all of
// base..base+n-1 when deltas is nil), spanning at least span offsets. The
// records belong to stream (default "s") with type typ (default "T"); the
// i-th has stream version vbase+i, or its offset+1 when vbase is 0.
type batchSpec struct {
	base    uint64
	n       int
	deltas  []uint64
	span    uint64
	control bool
	stream  string
	typ     string
	vbase   uint64
}

// buildBatch encodes spec with record.Builder. Record payloads name their
// offset, so tests can check which bytes arrived where.
func buildBatch(t testing.TB, s batchSpec) []byte {
	t.Helper()
	var b record.Builder
	var attr byte
	if s.control {
		attr = record.AttrControl
	}
	b.Reset(s.base, s.base+100, int64(1_000_000+s.base), attr)
	deltas := s.deltas
	if deltas == nil {
		for i := range s.n {
			deltas = append(deltas, uint64(i))
		}
	}
	stream, typ := cmp.Or(s.stream, "s"), cmp.Or(s.typ, "T")
	for i, d := range deltas {
		off := s.base + d
		version := off + 1
		if s.vbase != 0 {
			version = s.vbase + uint64(i)
		}
		r := record.Record{
			StreamVersion: version,
			Stream:        []byte(stream),
			Type:          []byte(typ),
			ProducerID:    []byte("p"),
			ProducerSeq:   off + 1,
			Metadata:      []byte(fmt.Sprintf("m%d", off)),
			Payload:       []byte(fmt.Sprintf("p%d", off)),
		}
		if err := b.AddAt(&r, d); err != nil {
			t.Fatalf("AddAt: %v", err)
		}
	}
	if s.span > 0 {
		b.ExtendSpan(s.span - 1)
	}
	out, err := b.Finish()
	if err != nil {
		t.Fatalf("Finish: %v", err)
	}
	return slices.Clone(out)
}

func concat(t testing.TB, specs ...batchSpec) []byte {
	t.Helper()
	var buf []byte
	for _, s := range specs {
		buf = append(buf, buildBatch(t, s)...)
	}
	return buf
}

// msgOf wraps concatenated batches as a ReadResponse whose next_offset is
// where the last batch ends, as in an unfiltered read.
func msgOf(buf []byte) *tsstorev1.ReadResponse {
	m := &tsstorev1.ReadResponse{Batches: buf}
	for len(buf) > 0 {
		h, err := record.ParseHeader(buf)
		if err != nil {
			break
		}
		m.NextOffset = h.NextOffset()
		if h.Size() > len(buf) {
			break
		}
		buf = buf[h.Size():]
	}
	return m
}

// replayMessages feeds ReadResponse.batches payloads of an unfiltered read
// through the same cursor and deliverer Replay uses and returns the
// delivered offsets.
func replayMessages(from, to uint64, bufs ...[]byte) ([]uint64, []RecordedEvent, error) {
	var msgs []*tsstorev1.ReadResponse
	for _, b := range bufs {
		msgs = append(msgs, msgOf(b))
	}
	return replayResponses(readOptions{to: to}, from, msgs...)
}

// replayResponses is replayMessages for whole responses and any options.
func replayResponses(o readOptions, from uint64, msgs ...*tsstorev1.ReadResponse) ([]uint64, []RecordedEvent, error) {
	var offs []uint64
	var evs []RecordedEvent
	var yieldErr error
	d := newDeliverer(&o, func(ev RecordedEvent, err error) bool {
		if err != nil {
			yieldErr = err
			return false
		}
		offs = append(offs, ev.Offset)
		evs = append(evs, ev)
		return true
	})
	cur := newCursor(from, &o)
	for _, m := range msgs {
		stop, err := cur.feed(m, d.batch)
		if err != nil {
			return offs, evs, err
		}
		if stop {
			break
		}
	}
	return offs, evs, yieldErr
}

func span(lo, hi uint64) []uint64 {
	var s []uint64
	for o := lo; o < hi; o++ {
		s = append(s, o)
	}
	return s
}

func TestReplaySkipsBeforeFromAndAfterTo(t *testing.T) {
	msgs := [][]byte{
		concat(t, batchSpec{base: 0, n: 4}, batchSpec{base: 4, n: 4}),
		concat(t, batchSpec{base: 8, n: 4}),
	}
	offs, evs, err := replayMessages(2, 10, msgs...)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(offs, span(2, 10)) {
		t.Fatalf("offsets %v, want 2..9", offs)
	}
	ev := evs[0]
	if ev.Stream != "s" || ev.Type != "T" || ev.ProducerID != "p" || ev.ProducerSeq != 3 ||
		ev.StreamVersion != 3 || string(ev.Metadata) != "m2" || string(ev.Payload) != "p2" ||
		ev.RaftIndex != 100 || ev.Timestamp.UnixNano() != 1_000_000 {
		t.Fatalf("event 2 decoded as %+v", ev)
	}
}

func TestReplayCopiesBytes(t *testing.T) {
	buf := concat(t, batchSpec{base: 0, n: 2})
	_, evs, err := replayMessages(0, 0, buf)
	if err != nil {
		t.Fatal(err)
	}
	clear(buf) // the receive buffer is reused
	if string(evs[1].Payload) != "p1" || string(evs[1].Metadata) != "m1" || evs[1].Stream != "s" {
		t.Fatalf("event aliases the receive buffer: %+v", evs[1])
	}
	if cap(evs[1].Metadata) != len(evs[1].Metadata) {
		t.Fatal("appending to Metadata would overwrite Payload")
	}
}

func TestReplayGapBetweenBatches(t *testing.T) {
	offs, _, err := replayMessages(0, 0,
		concat(t, batchSpec{base: 0, n: 3}),
		concat(t, batchSpec{base: 5, n: 3}))
	var g *GapError
	if !errors.As(err, &g) || g.From != 3 || g.To != 5 {
		t.Fatalf("err = %v, want gap [3, 5)", err)
	}
	if !slices.Equal(offs, span(0, 3)) {
		t.Fatalf("delivered %v before the gap, want 0..2", offs)
	}
}

func TestReplayFirstBatchMustCoverFrom(t *testing.T) {
	_, _, err := replayMessages(2, 0, concat(t, batchSpec{base: 4, n: 3}))
	var g *GapError
	if !errors.As(err, &g) || g.From != 2 || g.To != 4 {
		t.Fatalf("err = %v, want gap [2, 4)", err)
	}
	_, _, err = replayMessages(9, 0, concat(t, batchSpec{base: 4, n: 3}))
	if !errors.Is(err, ErrProtocol) {
		t.Fatalf("batch wholly before from: err = %v, want ErrProtocol", err)
	}
}

func TestReplayOverlapIsProtocolError(t *testing.T) {
	_, _, err := replayMessages(0, 0, concat(t, batchSpec{base: 0, n: 4}, batchSpec{base: 2, n: 4}))
	if !errors.Is(err, ErrProtocol) {
		t.Fatalf("err = %v, want ErrProtocol", err)
	}
}

func TestReplayFilteredBatchIsNotAGap(t *testing.T) {
	// A compacted batch keeps its span [3, 8) but holds only 4 and 6.
	offs, _, err := replayMessages(0, 0, concat(t,
		batchSpec{base: 0, n: 3},
		batchSpec{base: 3, deltas: []uint64{1, 3}, span: 5},
		batchSpec{base: 8, n: 2}))
	if err != nil {
		t.Fatal(err)
	}
	if want := []uint64{0, 1, 2, 4, 6, 8, 9}; !slices.Equal(offs, want) {
		t.Fatalf("offsets %v, want %v", offs, want)
	}
}

func TestReplaySkipsControlRecords(t *testing.T) {
	offs, _, err := replayMessages(0, 0, concat(t,
		batchSpec{base: 0, n: 2},
		batchSpec{base: 2, n: 1, control: true},
		batchSpec{base: 3, n: 2}))
	if err != nil {
		t.Fatal(err)
	}
	if want := []uint64{0, 1, 3, 4}; !slices.Equal(offs, want) {
		t.Fatalf("offsets %v, want %v", offs, want)
	}
}

func TestReplayCorruptBatch(t *testing.T) {
	good := concat(t, batchSpec{base: 0, n: 2})
	bad := concat(t, batchSpec{base: 2, n: 2})
	bad[len(bad)-1] ^= 0xff
	offs, _, err := replayMessages(0, 0, good, bad)
	if !errors.Is(err, ErrCorruption) || !errors.Is(err, record.ErrCorrupt) {
		t.Fatalf("err = %v, want ErrCorruption wrapping record.ErrCorrupt", err)
	}
	if !slices.Equal(offs, []uint64{0, 1}) {
		t.Fatalf("delivered %v before the corrupt batch", offs)
	}
	_, _, err = replayMessages(0, 0, good[:len(good)-3])
	if !errors.Is(err, ErrCorruption) {
		t.Fatalf("truncated message: err = %v, want ErrCorruption", err)
	}
}

func TestReplayStopsAtTo(t *testing.T) {
	// to falls inside the first batch: nothing after it is decoded, and the
	// garbage that follows is never looked at.
	msg := append(concat(t, batchSpec{base: 0, n: 5}), 0xde, 0xad)
	offs, _, err := replayMessages(1, 3, msg)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(offs, []uint64{1, 2}) {
		t.Fatalf("offsets %v, want [1 2]", offs)
	}
}

func TestReplayResumeMayStartInsideABatch(t *testing.T) {
	// After a reconnect the cursor is fresh again: the first batch may
	// start before next, and the already-delivered records are skipped.
	var offs []uint64
	d := newDeliverer(&readOptions{}, func(ev RecordedEvent, err error) bool {
		offs = append(offs, ev.Offset)
		return err == nil
	})
	cur := newCursor(0, &readOptions{})
	if _, err := cur.feed(msgOf(concat(t, batchSpec{base: 0, n: 3})), d.batch); err != nil {
		t.Fatal(err)
	}
	cur.fresh = true
	cur.next = 2 // as if only 0 and 1 had been covered
	if _, err := cur.feed(msgOf(concat(t, batchSpec{base: 0, n: 3}, batchSpec{base: 3, n: 1})), d.batch); err != nil {
		t.Fatal(err)
	}
	if want := []uint64{0, 1, 2, 2, 3}; !slices.Equal(offs, want) {
		t.Fatalf("offsets %v, want %v", offs, want)
	}
}

func TestReplayYieldFalseStops(t *testing.T) {
	n := 0
	d := newDeliverer(&readOptions{}, func(RecordedEvent, error) bool { n++; return n < 2 })
	cur := newCursor(0, &readOptions{})
	stop, err := cur.feed(msgOf(concat(t, batchSpec{base: 0, n: 3}, batchSpec{base: 3, n: 3})), d.batch)
	if err != nil || !stop {
		t.Fatalf("stop=%v err=%v, want stop", stop, err)
	}
	if n != 2 {
		t.Fatalf("yield called %d times after returning false", n)
	}
}

// FuzzReplayFeed feeds arbitrary bytes as a ReadResponse and checks the
// cursor never panics and delivers only increasing offsets in [from, to).
func FuzzReplayFeed(f *testing.F) {
	f.Add(concat(f, batchSpec{base: 0, n: 3}, batchSpec{base: 3, deltas: []uint64{0, 2}, span: 4}), uint64(1), uint64(6))
	f.Add([]byte{}, uint64(0), uint64(0))
	f.Fuzz(func(t *testing.T, buf []byte, from, to uint64) {
		offs, _, _ := replayMessages(from, to, buf)
		for i, o := range offs {
			if o < from || (to != 0 && o >= to) || (i > 0 && o <= offs[i-1]) {
				t.Fatalf("offsets %v out of order or outside [%d, %d)", offs, from, to)
			}
		}
	})
}
