package record

import (
	"encoding/binary"
	"fmt"
	"math"
)

// Record is one event as stored. Its byte-slice fields are views into the
// batch it was decoded from: they are valid only as long as that buffer is
// and must be copied by a caller that keeps them.
type Record struct {
	Offset        uint64
	StreamVersion uint64
	Stream        []byte
	Type          []byte
	ProducerID    []byte
	ProducerSeq   uint64
	Metadata      []byte
	Payload       []byte
}

// Batch is one complete batch whose CRC has been verified (by Verify or
// Next). Its methods do not re-check the CRC.
type Batch []byte

// Header returns the batch header.
func (b Batch) Header() Header {
	h, _ := ParseHeader(b)
	return h
}

// Records returns an iterator over the batch's records. A compressed
// batch is decompressed first (into a buffer of its own, which the
// records' byte slices then view); a failure to decompress is the
// iterator's Err.
func (b Batch) Records() RecordIter {
	h := b.Header()
	if h.Compression() != CompressionNone {
		data, err := decompress(b, h)
		return RecordIter{data: data, h: h, err: err}
	}
	return RecordIter{data: b[HeaderSize:h.Size()], h: h, next: 0}
}

// RecordIter decodes records one at a time, allocating nothing.
type RecordIter struct {
	data []byte
	h    Header
	i    uint32 // records decoded
	next uint64 // smallest delta the next record may have
	err  error
}

// Next decodes the next record into r. It returns false at the end of the
// batch or on a decode error, which Err then reports.
func (it *RecordIter) Next(r *Record) bool {
	if it.err != nil {
		return false
	}
	if it.i >= it.h.RecordCount {
		if len(it.data) != 0 {
			it.err = fmt.Errorf("%w: %d trailing bytes after last record of batch at offset %d", ErrCorrupt, len(it.data), it.h.BaseOffset)
		}
		return false
	}
	rec, delta, rest, err := decodeRecord(it.data)
	if err == nil && (delta < it.next || delta > uint64(it.h.LastDelta)) {
		err = fmt.Errorf("offset delta %d outside [%d, %d]", delta, it.next, it.h.LastDelta)
	}
	if err != nil {
		it.err = fmt.Errorf("%w: record %d of batch at offset %d: %v", ErrCorrupt, it.i, it.h.BaseOffset, err)
		return false
	}
	rec.Offset = it.h.BaseOffset + delta
	*r = rec
	it.data = rest
	it.next = delta + 1
	it.i++
	return true
}

// Err reports the first decode error, if any.
func (it *RecordIter) Err() error { return it.err }

type decoder struct {
	b   []byte
	err error
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = fmt.Errorf("bad varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) bytes(max uint64) []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > max || n > uint64(len(d.b)) {
		d.err = fmt.Errorf("field length %d exceeds %d available", n, len(d.b))
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func decodeRecord(b []byte) (r Record, delta uint64, rest []byte, err error) {
	d := decoder{b: b}
	body := d.bytes(MaxBatchSize)
	if d.err != nil {
		return Record{}, 0, nil, d.err
	}
	rest = d.b
	d = decoder{b: body}
	delta = d.uvarint()
	r.StreamVersion = d.uvarint()
	r.Stream = d.bytes(MaxNameLen)
	r.Type = d.bytes(MaxNameLen)
	r.ProducerID = d.bytes(MaxNameLen)
	r.ProducerSeq = d.uvarint()
	r.Metadata = d.bytes(MaxBatchSize)
	r.Payload = d.bytes(MaxBatchSize)
	if d.err == nil && len(d.b) != 0 {
		d.err = fmt.Errorf("%d unread bytes in record", len(d.b))
	}
	if d.err != nil {
		return Record{}, 0, nil, d.err
	}
	return r, delta, rest, nil
}

// Builder encodes one batch. Call Reset before the first Add. A Builder may
// be reused for many batches so that steady-state encoding allocates
// nothing.
type Builder struct {
	buf       []byte
	tmp       []byte
	count     uint32
	nextDelta uint64
	lastDelta uint64
}

// Reset starts a new batch.
func (b *Builder) Reset(baseOffset, raftIndex uint64, timestamp int64, attributes byte) {
	b.buf = append(b.buf[:0], make([]byte, HeaderSize)...)
	binary.BigEndian.PutUint64(b.buf[0:8], baseOffset)
	b.buf[16] = Magic
	b.buf[17] = attributes
	binary.BigEndian.PutUint64(b.buf[24:32], raftIndex)
	binary.BigEndian.PutUint64(b.buf[32:40], uint64(timestamp))
	b.count, b.nextDelta, b.lastDelta = 0, 0, 0
}

// Count is the number of records added since Reset.
func (b *Builder) Count() int { return int(b.count) }

// Len is the encoded size of the batch so far.
func (b *Builder) Len() int { return len(b.buf) }

// Add appends a record at the next offset of the batch (base, base+1, ...).
// r.Offset is ignored.
func (b *Builder) Add(r *Record) error { return b.AddAt(r, b.nextDelta) }

// AddAt appends a record at offset base+delta. Deltas must be strictly
// increasing; leaving gaps is how compaction and filters drop records while
// keeping offsets stable.
func (b *Builder) AddAt(r *Record, delta uint64) error {
	if len(r.Stream) > MaxNameLen || len(r.Type) > MaxNameLen || len(r.ProducerID) > MaxNameLen {
		return fmt.Errorf("record: name longer than %d bytes", MaxNameLen)
	}
	if delta < b.nextDelta || delta > 1<<32-2 {
		return fmt.Errorf("record: offset delta %d not after %d", delta, b.nextDelta)
	}
	t := b.tmp[:0]
	t = binary.AppendUvarint(t, delta)
	t = binary.AppendUvarint(t, r.StreamVersion)
	t = appendBytes(t, r.Stream)
	t = appendBytes(t, r.Type)
	t = appendBytes(t, r.ProducerID)
	t = binary.AppendUvarint(t, r.ProducerSeq)
	t = appendBytes(t, r.Metadata)
	t = appendBytes(t, r.Payload)
	b.tmp = t
	b.buf = binary.AppendUvarint(b.buf, uint64(len(t)))
	b.buf = append(b.buf, t...)
	b.count++
	b.nextDelta = delta + 1
	b.lastDelta = max(b.lastDelta, delta)
	return nil
}

// SetAttributes replaces the attribute byte of the batch being built.
func (b *Builder) SetAttributes(a byte) { b.buf[17] = a }

// ExtendSpan makes the batch span at least base+lastDelta, so that a batch
// whose trailing records were dropped still covers their offsets.
func (b *Builder) ExtendSpan(lastDelta uint64) { b.lastDelta = max(b.lastDelta, lastDelta) }

// RecordSize is the encoded size of r inside a batch at the given delta,
// length prefix included.
func RecordSize(r *Record, delta uint64) int {
	n := uvarintLen(delta) + uvarintLen(r.StreamVersion) + uvarintLen(r.ProducerSeq) +
		bytesLen(r.Stream) + bytesLen(r.Type) + bytesLen(r.ProducerID) +
		bytesLen(r.Metadata) + bytesLen(r.Payload)
	return uvarintLen(uint64(n)) + n
}

// Finish completes the header (length, span, count, CRC) and returns the
// batch. The result aliases the Builder's buffer until the next Reset.
func (b *Builder) Finish() (Batch, error) {
	if b.count == 0 {
		return nil, fmt.Errorf("record: empty batch")
	}
	if len(b.buf) > MaxBatchSize {
		return nil, fmt.Errorf("record: batch of %d bytes exceeds %d", len(b.buf), MaxBatchSize)
	}
	// The span must fit the 32-bit last-delta field and must not run past
	// the largest offset, or the header would lie about it (ExtendSpan
	// does not check) or fail to decode.
	if b.lastDelta > math.MaxUint32 {
		return nil, fmt.Errorf("record: span of %d offsets does not fit a batch", b.lastDelta+1)
	}
	if base := binary.BigEndian.Uint64(b.buf[0:8]); base+b.lastDelta+1 <= base {
		return nil, fmt.Errorf("record: batch at offset %d spanning %d offsets overflows", base, b.lastDelta+1)
	}
	binary.BigEndian.PutUint32(b.buf[8:12], uint32(len(b.buf)-lengthFieldEnd))
	binary.BigEndian.PutUint32(b.buf[20:24], uint32(b.lastDelta))
	binary.BigEndian.PutUint32(b.buf[40:44], b.count)
	binary.BigEndian.PutUint32(b.buf[12:16], Checksum(b.buf))
	return Batch(b.buf), nil
}

func appendBytes(dst, v []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(v)))
	return append(dst, v...)
}

func uvarintLen(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}

func bytesLen(v []byte) int { return uvarintLen(uint64(len(v))) + len(v) }
