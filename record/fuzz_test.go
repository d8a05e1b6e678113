package record

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

// FuzzVerify feeds arbitrary bytes to the batch decoder. It must never
// panic, must return only ErrShort or ErrCorrupt, and whatever Next
// accepts must decode to records that re-encode to the same batch. So
// that the CRC does not shield the record decoder, the input is also
// tried with its CRC field fixed up.
func FuzzVerify(f *testing.F) {
	good := build(f, 100, 3, 77, 0, testRecords(), nil)
	f.Add([]byte(good))
	f.Add(append(bytes.Clone(good), good...))
	f.Add([]byte(good[:len(good)-1]))
	f.Add(make([]byte, HeaderSize))
	if z, err := Compress(nil, build(f, 100, 3, 77, 0, repetitiveRecords(50), nil), CompressionZstd); err == nil {
		f.Add([]byte(z))
	}
	f.Add([]byte(rawBatch([]byte{8, 0, 0, 0, 0, 0, 0, 0, 0}, 1, 0)))
	f.Fuzz(func(t *testing.T, data []byte) {
		if h, err := ParseHeader(data); err == nil && len(data) >= h.Size() {
			fixed := bytes.Clone(data[:h.Size()])
			binary.BigEndian.PutUint32(fixed[12:16], Checksum(fixed))
			if _, err := Verify(fixed); err != nil {
				t.Fatalf("fixed-up CRC still fails: %v", err)
			}
			checkBatch(t, Batch(fixed))
		}
		for rest := data; len(rest) > 0; {
			b, r, err := Next(rest)
			if err != nil {
				if !errors.Is(err, ErrShort) && !errors.Is(err, ErrCorrupt) {
					t.Fatalf("unexpected error class: %v", err)
				}
				return
			}
			checkBatch(t, b)
			rest = r
		}
	})
}

// checkBatch decodes a verified batch and, if its records decode, checks
// that building them again gives back the same bytes.
func checkBatch(t *testing.T, b Batch) {
	h := b.Header()
	if h.Size() != len(b) {
		t.Fatalf("batch of %d bytes, header says %d", len(b), h.Size())
	}
	var bl Builder
	bl.Reset(h.BaseOffset, h.RaftIndex, h.Timestamp, h.Attributes)
	it := b.Records()
	var r Record
	n := 0
	for it.Next(&r) {
		if r.Offset < h.BaseOffset || r.Offset > h.LastOffset() {
			t.Fatalf("record offset %d outside [%d, %d]", r.Offset, h.BaseOffset, h.LastOffset())
		}
		if err := bl.AddAt(&r, r.Offset-h.BaseOffset); err != nil {
			return // legal on the wire, refused by the builder (e.g. delta 1<<32-1)
		}
		n++
	}
	if it.Err() != nil {
		if !errors.Is(it.Err(), ErrCorrupt) {
			t.Fatalf("record error not ErrCorrupt: %v", it.Err())
		}
		return
	}
	if n != int(h.RecordCount) {
		t.Fatalf("decoded %d records, header says %d", n, h.RecordCount)
	}
	bl.ExtendSpan(uint64(h.LastDelta))
	again, err := bl.Finish()
	if err != nil {
		t.Fatalf("re-encoding a valid batch: %v", err)
	}
	// Reserved bytes and non-canonical varints are not preserved; compare
	// what the format defines.
	h2, err := Verify(again)
	if err != nil {
		t.Fatal(err)
	}
	h.CRC, h2.CRC, h.Length, h2.Length = 0, 0, 0, 0
	if h != h2 {
		t.Fatalf("header %+v re-encoded as %+v", h, h2)
	}
}

// FuzzRecords builds a batch from fuzzed fields, then decodes it: the
// round trip must be exact.
func FuzzRecords(f *testing.F) {
	f.Add(uint64(0), uint64(1), int64(5), byte(0), []byte("stream"), []byte("type"), []byte("pid"), uint64(3), []byte("meta"), []byte("payload"), uint8(3), uint8(0))
	f.Add(uint64(1<<40), uint64(0), int64(-1), AttrControl, []byte{}, []byte{}, []byte{}, uint64(0), []byte{}, []byte{}, uint8(1), uint8(9))
	f.Fuzz(func(t *testing.T, base, raft uint64, ts int64, attrs byte, stream, typ, pid []byte, seq uint64, meta, payload []byte, n, gap uint8) {
		if len(stream) > MaxNameLen || len(typ) > MaxNameLen || len(pid) > MaxNameLen || base > 1<<62 {
			return
		}
		attrs &^= AttrCompressionMask // the builder writes records as they are
		var bl Builder
		bl.Reset(base, raft, ts, attrs)
		want := make([]Record, int(n%8)+1)
		var delta uint64
		for i := range want {
			want[i] = Record{Offset: base + delta, StreamVersion: seq + uint64(i), Stream: stream, Type: typ, ProducerID: pid, ProducerSeq: seq, Metadata: meta, Payload: payload}
			if err := bl.AddAt(&want[i], delta); err != nil {
				t.Fatal(err)
			}
			delta += 1 + uint64(gap%4)
		}
		b, err := bl.Finish()
		if err != nil {
			t.Fatal(err)
		}
		h, err := Verify(b)
		if err != nil {
			t.Fatal(err)
		}
		if h.BaseOffset != base || h.RaftIndex != raft || h.Timestamp != ts || h.Attributes != attrs || int(h.RecordCount) != len(want) {
			t.Fatalf("header %+v", h)
		}
		it := b.Records()
		var r Record
		for i := range want {
			if !it.Next(&r) || !sameRecord(r, want[i]) {
				t.Fatalf("record %d: %+v, %v", i, r, it.Err())
			}
		}
		if it.Next(&r) || it.Err() != nil {
			t.Fatalf("trailing record or error: %v", it.Err())
		}
	})
}
