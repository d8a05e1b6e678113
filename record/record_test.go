package record

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"testing"
)

func testRecords() []Record {
	return []Record{
		{StreamVersion: 1, Stream: []byte("orders-1"), Type: []byte("Placed"), ProducerID: []byte("p1"), ProducerSeq: 7, Metadata: []byte(`{"k":1}`), Payload: []byte("hello")},
		{},
		{StreamVersion: 1 << 40, Stream: bytes.Repeat([]byte("s"), MaxNameLen), Type: []byte("t"), Payload: bytes.Repeat([]byte{0xff}, 1000)},
	}
}

func build(t testing.TB, base, raft uint64, ts int64, attrs byte, recs []Record, deltas []uint64) Batch {
	t.Helper()
	var b Builder
	b.Reset(base, raft, ts, attrs)
	for i := range recs {
		var err error
		if deltas == nil {
			err = b.Add(&recs[i])
		} else {
			err = b.AddAt(&recs[i], deltas[i])
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	out, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Clone(out)
}

func sameRecord(a, b Record) bool {
	return a.Offset == b.Offset && a.StreamVersion == b.StreamVersion && a.ProducerSeq == b.ProducerSeq &&
		bytes.Equal(a.Stream, b.Stream) && bytes.Equal(a.Type, b.Type) && bytes.Equal(a.ProducerID, b.ProducerID) &&
		bytes.Equal(a.Metadata, b.Metadata) && bytes.Equal(a.Payload, b.Payload)
}

func TestRoundTrip(t *testing.T) {
	recs := testRecords()
	b := build(t, 1000, 42, -5, AttrControl, recs, nil)
	h, err := Verify(b)
	if err != nil {
		t.Fatal(err)
	}
	want := Header{BaseOffset: 1000, Length: uint32(len(b) - 12), CRC: h.CRC, Magic: Magic, Attributes: AttrControl,
		LastDelta: 2, RaftIndex: 42, Timestamp: -5, RecordCount: 3}
	if h != want || h.Size() != len(b) || !h.Complete() || !h.IsControl() || h.LastOffset() != 1002 || h.NextOffset() != 1003 {
		t.Fatalf("header %+v, want %+v", h, want)
	}
	it := b.Records()
	var r Record
	for i := range recs {
		if !it.Next(&r) {
			t.Fatalf("record %d: %v", i, it.Err())
		}
		recs[i].Offset = 1000 + uint64(i)
		if !sameRecord(r, recs[i]) {
			t.Fatalf("record %d = %+v, want %+v", i, r, recs[i])
		}
		if got := RecordSize(&recs[i], uint64(i)); got <= 0 {
			t.Fatal(got)
		}
	}
	if it.Next(&r) || it.Err() != nil {
		t.Fatalf("extra record or error %v", it.Err())
	}
	// RecordSize matches the encoding.
	size := 0
	for i := range recs {
		size += RecordSize(&recs[i], uint64(i))
	}
	if size != len(b)-HeaderSize {
		t.Fatalf("RecordSize total %d, records take %d bytes", size, len(b)-HeaderSize)
	}
}

func TestGapsAndSpan(t *testing.T) {
	recs := testRecords()[:2]
	var bl Builder
	bl.Reset(10, 1, 1, 0)
	if err := bl.AddAt(&recs[0], 3); err != nil {
		t.Fatal(err)
	}
	if err := bl.AddAt(&recs[1], 3); err == nil {
		t.Fatal("AddAt accepted a repeated delta")
	}
	if err := bl.AddAt(&recs[1], 7); err != nil {
		t.Fatal(err)
	}
	bl.ExtendSpan(20)
	b, err := bl.Finish()
	if err != nil {
		t.Fatal(err)
	}
	h, err := Verify(b)
	if err != nil || h.LastOffset() != 30 || h.Complete() || h.RecordCount != 2 {
		t.Fatalf("%+v %v", h, err)
	}
	it := b.Records()
	var r Record
	var got []uint64
	for it.Next(&r) {
		got = append(got, r.Offset)
	}
	if it.Err() != nil || len(got) != 2 || got[0] != 13 || got[1] != 17 {
		t.Fatalf("offsets %v, %v", got, it.Err())
	}
}

// TestFinishRejectsBadSpan covers a fixed bug: Finish used to truncate a
// span wider than 32 bits (ExtendSpan does not check) into a header that
// verified but lied, and built batches whose offsets overflow.
func TestFinishRejectsBadSpan(t *testing.T) {
	var b Builder
	b.Reset(0, 1, 1, 0)
	b.Add(&Record{})
	b.ExtendSpan(1<<32 + 5)
	if _, err := b.Finish(); err == nil {
		t.Fatal("Finish accepted a span wider than the last-delta field")
	}
	b.Reset(0, 1, 1, 0)
	b.Add(&Record{})
	b.ExtendSpan(math.MaxUint32)
	if _, err := b.Finish(); err != nil {
		t.Fatalf("largest span: %v", err)
	}
	b.Reset(math.MaxUint64-1, 1, 1, 0)
	b.Add(&Record{})
	b.Add(&Record{})
	if _, err := b.Finish(); err == nil {
		t.Fatal("Finish accepted offsets that overflow")
	}
}

func TestBuilderErrors(t *testing.T) {
	var b Builder
	b.Reset(0, 0, 0, 0)
	if _, err := b.Finish(); err == nil {
		t.Fatal("empty batch")
	}
	if err := b.Add(&Record{Stream: make([]byte, MaxNameLen+1)}); err == nil {
		t.Fatal("long stream name")
	}
	if err := b.AddAt(&Record{}, 1<<32); err == nil {
		t.Fatal("delta beyond 32 bits")
	}
	b.Reset(0, 0, 0, 0)
	if err := b.Add(&Record{Payload: make([]byte, MaxBatchSize)}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Finish(); err == nil {
		t.Fatal("oversized batch")
	}
	// Reuse after an error works and allocates nothing.
	recs := testRecords()
	allocs := testing.AllocsPerRun(20, func() {
		b.Reset(5, 1, 1, 0)
		for i := range recs {
			b.Add(&recs[i])
		}
		if _, err := b.Finish(); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("steady-state encoding allocates %v times", allocs)
	}
}

func TestVerifyErrors(t *testing.T) {
	good := build(t, 7, 1, 1, 0, testRecords(), nil)
	mut := func(f func(b []byte)) []byte { c := bytes.Clone(good); f(c); return c }
	for _, tc := range []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, ErrShort},
		{"header cut", good[:HeaderSize-1], ErrShort},
		{"body cut", good[:len(good)-1], ErrShort},
		{"crc", mut(func(b []byte) { b[len(b)-1] ^= 1 }), ErrCorrupt},
		{"crc field", mut(func(b []byte) { b[12] ^= 1 }), ErrCorrupt},
		{"magic", mut(func(b []byte) { b[16] = 2 }), ErrCorrupt},
		{"length small", mut(func(b []byte) { binary.BigEndian.PutUint32(b[8:], 10) }), ErrCorrupt},
		{"length huge", mut(func(b []byte) { binary.BigEndian.PutUint32(b[8:], MaxBatchSize) }), ErrCorrupt},
		{"zero records", mut(func(b []byte) { binary.BigEndian.PutUint32(b[40:], 0) }), ErrCorrupt},
		{"count beyond span", mut(func(b []byte) { binary.BigEndian.PutUint32(b[20:], 1) }), ErrCorrupt},
		{"offset overflow", mut(func(b []byte) { binary.BigEndian.PutUint64(b[0:], math.MaxUint64-1) }), ErrCorrupt},
	} {
		_, err := Verify(tc.b)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: Verify = %v, want %v", tc.name, err, tc.want)
		}
	}
	if _, err := Verify(append(bytes.Clone(good), 1, 2, 3)); err != nil {
		t.Fatalf("trailing bytes belong to the next batch: %v", err)
	}
}

func TestNext(t *testing.T) {
	a := build(t, 0, 1, 1, 0, testRecords()[:1], nil)
	b := build(t, 1, 2, 2, 0, testRecords()[1:], nil)
	buf := append(append([]byte{}, a...), b...)
	var got []Batch
	for {
		bt, rest, err := Next(buf)
		if err != nil {
			t.Fatal(err)
		}
		if bt == nil {
			break
		}
		got = append(got, bt)
		buf = rest
	}
	if len(got) != 2 || !bytes.Equal(got[0], a) || !bytes.Equal(got[1], b) {
		t.Fatalf("got %d batches", len(got))
	}
	torn := append(bytes.Clone(a), b[:10]...)
	_, rest, err := Next(torn[len(a):])
	if !errors.Is(err, ErrShort) || len(rest) != 10 {
		t.Fatalf("torn: %v, %d bytes left", err, len(rest))
	}
}

// TestRecordDecodeErrors builds batches with a valid CRC around bad record
// bytes: the iterator must report ErrCorrupt, never panic.
func TestRecordDecodeErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		body  []byte
		count uint32
		delta uint32
	}{
		{"bad varint", []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 1, 0},
		{"length past end", []byte{50, 0, 0}, 1, 0},
		{"short body", []byte{2, 0, 0}, 1, 0},
		{"unread bytes", append([]byte{10}, 0, 0, 0, 0, 0, 0, 0, 0, 9, 9), 1, 0},
		{"delta beyond span", []byte{8, 5, 0, 0, 0, 0, 0, 0, 0}, 1, 0},
		{"delta repeats", []byte{8, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0}, 2, 1},
		{"trailing bytes", []byte{8, 0, 0, 0, 0, 0, 0, 0, 0, 1}, 1, 0},
		{"missing record", []byte{8, 0, 0, 0, 0, 0, 0, 0, 0}, 2, 1},
		{"long name", append([]byte{0x82, 0x02, 0, 0, 0x80, 0x02}, make([]byte, 256)...), 1, 0},
	} {
		b := rawBatch(tc.body, tc.count, tc.delta)
		if _, err := Verify(b); err != nil {
			t.Fatalf("%s: the test batch must verify: %v", tc.name, err)
		}
		it := Batch(b).Records()
		var r Record
		for it.Next(&r) {
		}
		if !errors.Is(it.Err(), ErrCorrupt) {
			t.Errorf("%s: Err = %v", tc.name, it.Err())
		}
	}
}

// rawBatch wraps body in a header with a correct CRC.
func rawBatch(body []byte, count, lastDelta uint32) []byte {
	b := make([]byte, HeaderSize, HeaderSize+len(body))
	b = append(b, body...)
	binary.BigEndian.PutUint32(b[8:], uint32(len(b)-lengthFieldEnd))
	b[16] = Magic
	binary.BigEndian.PutUint32(b[20:], lastDelta)
	binary.BigEndian.PutUint32(b[40:], count)
	binary.BigEndian.PutUint32(b[12:], Checksum(b))
	return b
}

// TestFrozenLayout pins the byte layout of a batch: changing the encoder
// in any way breaks this test, which is the point.
func TestFrozenLayout(t *testing.T) {
	b := build(t, 0x0102030405060708, 9, 10, 0, []Record{{StreamVersion: 1, Stream: []byte("s"), Type: []byte("t"), ProducerID: []byte("p"), ProducerSeq: 2, Metadata: []byte("m"), Payload: []byte("x")}}, nil)
	want := []byte{
		1, 2, 3, 4, 5, 6, 7, 8, // base offset
		0, 0, 0, 46, // length
		0x0f, 0x3b, 0x1a, 0x67, // CRC-32C of bytes [16, 58)
		1, 0, 0, 0, // magic, attributes, reserved
		0, 0, 0, 0, // last delta
		0, 0, 0, 0, 0, 0, 0, 9, // raft index
		0, 0, 0, 0, 0, 0, 0, 10, // timestamp
		0, 0, 0, 1, // record count
		13, 0, 1, 1, 's', 1, 't', 1, 'p', 2, 1, 'm', 1, 'x', // record
	}
	if !bytes.Equal(b, want) {
		t.Fatalf("layout changed:\n got %v\nwant %v", []byte(b), want)
	}
}
