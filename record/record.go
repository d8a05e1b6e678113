package record

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// Frozen format constants. Changing any of them breaks every segment file
// and every client in the field; add a new magic instead.
const (
	// Magic identifies version 1 of the batch layout.
	Magic byte = 1
	// HeaderSize is the size of the fixed batch header.
	HeaderSize = 44
	// lengthFieldEnd is where the bytes counted by the length field start.
	lengthFieldEnd = 12
	// crcStart is the first byte covered by the CRC.
	crcStart = 16

	// AttrControl marks a control batch (compaction markers and the like):
	// it carries no user events.
	AttrControl byte = 1 << 0
	// AttrContinued marks a batch that is not the last of its Raft entry:
	// more batches with the same raft index follow. A log never ends with
	// such a batch; recovery drops a trailing incomplete entry whole.
	AttrContinued byte = 1 << 1
)

// Limits enforced by the decoder. They bound what a corrupt or hostile
// length field can make a reader allocate.
const (
	// MaxBatchSize is the largest batch, header included, the decoder accepts.
	MaxBatchSize = 64 << 20
	// MaxNameLen bounds stream names, event types and producer ids.
	MaxNameLen = 255
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Errors returned by the decoder. ErrCorrupt is a marker: check it with
// errors.Is; the wrapped message says what was wrong.
var (
	// ErrCorrupt means the bytes are not a valid batch: a CRC mismatch, a bad
	// magic, an impossible length, or a record that does not parse.
	ErrCorrupt = errors.New("record: corrupt batch")
	// ErrShort means the buffer ends before the batch does: a torn write at
	// the tail of a file, or a caller that must read more bytes.
	ErrShort = errors.New("record: short buffer")
)

// Header is the decoded fixed part of a batch.
type Header struct {
	BaseOffset  uint64
	Length      uint32
	CRC         uint32
	Magic       byte
	Attributes  byte
	LastDelta   uint32
	RaftIndex   uint64
	Timestamp   int64
	RecordCount uint32
}

// Size is the total size of the batch in bytes, header included.
func (h Header) Size() int { return lengthFieldEnd + int(h.Length) }

// LastOffset is the last offset the batch spans.
func (h Header) LastOffset() uint64 { return h.BaseOffset + uint64(h.LastDelta) }

// NextOffset is the offset that follows the batch's span.
func (h Header) NextOffset() uint64 { return h.LastOffset() + 1 }

// Complete reports whether the batch holds every offset of its span.
func (h Header) Complete() bool { return uint64(h.RecordCount) == uint64(h.LastDelta)+1 }

// Continued reports whether more batches of the same Raft entry follow.
func (h Header) Continued() bool { return h.Attributes&AttrContinued != 0 }

// IsControl reports whether the batch is a control batch.
func (h Header) IsControl() bool { return h.Attributes&AttrControl != 0 }

// ParseHeader decodes the fixed header at the start of b without checking
// the CRC. It returns ErrShort if b is shorter than HeaderSize and
// ErrCorrupt if the header is impossible.
func ParseHeader(b []byte) (Header, error) {
	if len(b) < HeaderSize {
		return Header{}, ErrShort
	}
	h := Header{
		BaseOffset:  binary.BigEndian.Uint64(b[0:8]),
		Length:      binary.BigEndian.Uint32(b[8:12]),
		CRC:         binary.BigEndian.Uint32(b[12:16]),
		Magic:       b[16],
		Attributes:  b[17],
		LastDelta:   binary.BigEndian.Uint32(b[20:24]),
		RaftIndex:   binary.BigEndian.Uint64(b[24:32]),
		Timestamp:   int64(binary.BigEndian.Uint64(b[32:40])),
		RecordCount: binary.BigEndian.Uint32(b[40:44]),
	}
	switch {
	case h.Magic != Magic:
		return h, fmt.Errorf("%w: magic %d, want %d", ErrCorrupt, h.Magic, Magic)
	case h.Compression() != CompressionNone && h.Compression() != CompressionZstd:
		return h, fmt.Errorf("%w: unknown compression %#x", ErrCorrupt, h.Compression())
	case h.Size() < HeaderSize || h.Size() > MaxBatchSize:
		return h, fmt.Errorf("%w: batch length %d out of range", ErrCorrupt, h.Length)
	case h.RecordCount == 0:
		return h, fmt.Errorf("%w: zero records", ErrCorrupt)
	case uint64(h.RecordCount) > uint64(h.LastDelta)+1:
		return h, fmt.Errorf("%w: %d records in a span of %d offsets", ErrCorrupt, h.RecordCount, uint64(h.LastDelta)+1)
	case h.Compression() == CompressionNone && uint64(h.RecordCount) > uint64(h.Size()-HeaderSize):
		return h, fmt.Errorf("%w: %d records cannot fit in %d bytes", ErrCorrupt, h.RecordCount, h.Size())
	case h.BaseOffset+uint64(h.LastDelta)+1 <= h.BaseOffset:
		return h, fmt.Errorf("%w: offsets overflow", ErrCorrupt)
	}
	return h, nil
}

// Checksum computes the CRC a well-formed batch must carry.
func Checksum(batch []byte) uint32 {
	return crc32.Checksum(batch[crcStart:], castagnoli)
}

// Verify checks that b starts with one complete, intact batch and returns
// its header. It checks the CRC but does not decode records; use
// Batch.Records for that (records are checked as they are decoded).
func Verify(b []byte) (Header, error) {
	h, err := ParseHeader(b)
	if err != nil {
		return h, err
	}
	if len(b) < h.Size() {
		return h, ErrShort
	}
	if got := Checksum(b[:h.Size()]); got != h.CRC {
		return h, fmt.Errorf("%w: crc %08x, want %08x (base offset %d)", ErrCorrupt, got, h.CRC, h.BaseOffset)
	}
	return h, nil
}

// Next splits the first verified batch off a buffer of concatenated
// batches. At the end of buf it returns a nil batch and a nil error.
func Next(buf []byte) (batch Batch, rest []byte, err error) {
	if len(buf) == 0 {
		return nil, nil, nil
	}
	h, err := Verify(buf)
	if err != nil {
		return nil, buf, err
	}
	return Batch(buf[:h.Size()]), buf[h.Size():], nil
}
