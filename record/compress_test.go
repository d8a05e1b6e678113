package record

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
)

// repetitiveRecords are n training-like events, which compress well.
func repetitiveRecords(n int) []Record {
	out := make([]Record, n)
	for i := range out {
		out[i] = Record{StreamVersion: uint64(i + 1), Stream: []byte("run/bert-7"), Type: []byte("BatchCompleted"),
			ProducerID: []byte("trainer-0"), ProducerSeq: uint64(i + 1),
			Payload: fmt.Appendf(nil, `{"step":%d,"loss":%.4f,"lr":0.0003,"grad_norm":%.3f,"tokens":524288}`, i, 2.5-float64(i)/1000, 1+float64(i%7)/10)}
	}
	return out
}

func decodeAll(t *testing.T, b Batch) []Record {
	t.Helper()
	var out []Record
	it := b.Records()
	var r Record
	for it.Next(&r) {
		out = append(out, r)
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestCompressRoundTrip(t *testing.T) {
	plain := build(t, 1000, 9, 123, AttrContinued, repetitiveRecords(200), nil)
	z, err := Compress(nil, plain, CompressionZstd)
	if err != nil {
		t.Fatal(err)
	}
	h, err := Verify(z)
	if err != nil {
		t.Fatalf("compressed batch does not verify: %v", err)
	}
	ph := plain.Header()
	if h.Compression() != CompressionZstd || !h.Continued() || h.BaseOffset != ph.BaseOffset || h.LastDelta != ph.LastDelta ||
		h.RecordCount != ph.RecordCount || h.RaftIndex != 9 || h.Timestamp != 123 || h.Size() != len(z) {
		t.Fatalf("compressed header %+v, plain %+v", h, ph)
	}
	if len(z)*3 > len(plain) {
		t.Fatalf("training events compressed to %d of %d bytes", len(z), len(plain))
	}
	got, want := decodeAll(t, z), decodeAll(t, plain)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatal("compressed batch decodes to other records")
	}
	// Decompressed gives back the uncompressed batch byte for byte.
	back, err := z.Decompressed(nil)
	if err != nil || !bytes.Equal(back, plain) {
		t.Fatalf("Decompressed differs from the original (%v)", err)
	}
	if same, _ := plain.Decompressed(nil); !bytes.Equal(same, plain) {
		t.Fatal("Decompressed of an uncompressed batch changed it")
	}
	// Deterministic: replicas compress the same records to the same bytes.
	dst := []byte("prefix")
	z2, _ := Compress(dst, plain, CompressionZstd)
	if !bytes.Equal(z2, z) {
		t.Fatal("compressing twice gave other bytes")
	}
	// Compressing a compressed batch, or with no codec, copies it.
	if again, _ := Compress(nil, z, CompressionZstd); !bytes.Equal(again, z) {
		t.Fatal("a compressed batch was compressed again")
	}
	if none, _ := Compress(nil, plain, CompressionNone); !bytes.Equal(none, plain) {
		t.Fatal("CompressionNone changed the batch")
	}
}

// Random payloads do not shrink: the batch stays as it was.
func TestCompressNoGain(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	p := make([]byte, 4096)
	for j := range p {
		p[j] = byte(rng.Uint32())
	}
	recs := []Record{{Stream: []byte("s"), Type: []byte("t"), Payload: p}}
	plain := build(t, 0, 1, 1, 0, recs, nil)
	z, err := Compress(nil, plain, CompressionZstd)
	if err != nil || !bytes.Equal(z, plain) {
		t.Fatalf("incompressible batch: %d bytes (plain %d), %v", len(z), len(plain), err)
	}
}

func TestCompressedCorruption(t *testing.T) {
	plain := build(t, 0, 1, 1, 0, repetitiveRecords(100), nil)
	z, err := Compress(nil, plain, CompressionZstd)
	if err != nil {
		t.Fatal(err)
	}
	// A flipped bit fails the CRC, as in any batch.
	bad := bytes.Clone(z)
	bad[HeaderSize] ^= 1 // in the zstd frame's magic
	if _, err := Verify(bad); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("flipped bit: %v", err)
	}
	// With the CRC fixed up, the frame itself is refused when decoded.
	binary.BigEndian.PutUint32(bad[12:16], Checksum(bad))
	if _, err := Verify(bad); err != nil {
		t.Fatal(err)
	}
	it := Batch(bad).Records()
	var r Record
	for it.Next(&r) {
	}
	if !errors.Is(it.Err(), ErrCorrupt) {
		t.Fatalf("damaged frame: %v", it.Err())
	}
	if _, err := Batch(bad).Decompressed(nil); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Decompressed of a damaged frame: %v", err)
	}
	// Codecs 2 and 3 are unassigned.
	for _, codec := range []byte{2 << 2, 3 << 2} {
		odd := bytes.Clone(z)
		odd[17] = odd[17]&^AttrCompressionMask | codec
		binary.BigEndian.PutUint32(odd[12:16], Checksum(odd))
		if _, err := Verify(odd); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("codec %#x: %v", codec, err)
		}
	}
	if _, err := Compress(nil, plain, 2<<2); err == nil {
		t.Fatal("Compress accepted an unknown codec")
	}
}
