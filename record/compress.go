package record

import (
	"encoding/binary"
	"fmt"

	"github.com/klauspost/compress/zstd"
)

// Compression of a batch's records section: bits 2-3 of the attributes.
// Frozen: values 2 and 3 are unassigned and refused by ParseHeader.
const (
	// AttrCompressionMask selects the compression bits of the attributes.
	AttrCompressionMask byte = 3 << 2
	// CompressionNone: the records follow the header as they are.
	CompressionNone byte = 0
	// CompressionZstd: bytes [44, end) are one zstd frame (RFC 8878, no
	// content checksum: the batch CRC covers the compressed bytes) whose
	// content is the records section. The header (count, span, CRC over
	// what is stored) is the uncompressed batch's but for the length, the
	// attributes and the CRC.
	CompressionZstd byte = 1 << 2
)

// Compression returns the codec bits of the batch's attributes.
func (h Header) Compression() byte { return h.Attributes & AttrCompressionMask }

// The encoder and decoder are safe for concurrent EncodeAll/DecodeAll.
// Encoding is deterministic for one library version and these options:
// replicas compress the same records to the same bytes, which is what
// keeps their segments byte-identical (they must run the same version).
var (
	zenc, _ = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1),
		zstd.WithEncoderCRC(false), zstd.WithZeroFrames(false), zstd.WithLowerEncoderMem(true))
	// WithDecoderMaxMemory bounds what DecodeAll produces: a frame that
	// claims more than a batch may hold is refused, not allocated.
	zdec, _ = zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(MaxBatchSize))
)

// Compress appends to dst the batch b with its records section compressed
// by codec (CompressionZstd), or b unchanged when that would not make it
// smaller, or when b is compressed already or codec is CompressionNone.
// b must be a verified batch.
func Compress(dst []byte, b Batch, codec byte) (Batch, error) {
	h := b.Header()
	if codec == CompressionNone || h.Compression() != CompressionNone {
		return append(dst, b...), nil
	}
	if codec != CompressionZstd {
		return nil, fmt.Errorf("record: unknown compression %#x", codec)
	}
	// Encoded into a buffer of its own, so that nothing the caller's dst
	// holds can reach the encoder: the frame is a function of the records.
	frame := zenc.EncodeAll(b[HeaderSize:h.Size()], nil)
	start := len(dst)
	dst = append(dst, b[:HeaderSize]...)
	dst = append(dst, frame...)
	out := dst[start:]
	if len(out) >= h.Size() {
		return append(dst[:start], b...), nil
	}
	out[17] = h.Attributes&^AttrCompressionMask | codec
	binary.BigEndian.PutUint32(out[8:12], uint32(len(out)-lengthFieldEnd))
	binary.BigEndian.PutUint32(out[12:16], Checksum(out))
	return Batch(out), nil
}

// decompress returns the records section of a compressed batch.
func decompress(b Batch, h Header) ([]byte, error) {
	switch h.Compression() {
	case CompressionZstd:
		out, err := zdec.DecodeAll(b[HeaderSize:h.Size()], nil)
		if err != nil {
			return nil, fmt.Errorf("%w: zstd records of batch at offset %d: %v", ErrCorrupt, h.BaseOffset, err)
		}
		return out, nil
	}
	return nil, fmt.Errorf("%w: unknown compression %#x of batch at offset %d", ErrCorrupt, h.Compression(), h.BaseOffset)
}

// Decompressed returns b as an uncompressed batch with the same records,
// span and raft index (and a CRC of its own), appended to dst; b itself
// when it is not compressed.
func (b Batch) Decompressed(dst []byte) (Batch, error) {
	h := b.Header()
	if h.Compression() == CompressionNone {
		return b, nil
	}
	body, err := decompress(b, h)
	if err != nil {
		return nil, err
	}
	start := len(dst)
	dst = append(dst, b[:HeaderSize]...)
	dst = append(dst, body...)
	out := dst[start:]
	if len(out) > MaxBatchSize {
		return nil, fmt.Errorf("%w: batch at offset %d holds %d bytes uncompressed", ErrCorrupt, h.BaseOffset, len(out))
	}
	out[17] = h.Attributes &^ AttrCompressionMask
	binary.BigEndian.PutUint32(out[8:12], uint32(len(out)-lengthFieldEnd))
	binary.BigEndian.PutUint32(out[12:16], Checksum(out))
	return Batch(out), nil
}
