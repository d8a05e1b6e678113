package train

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/vmihailenco/msgpack/v5"
)

// Envelope and fence formats: see the package doc. Frozen.
const (
	envelopeArray = 0x92 // msgpack fixarray of 2 elements
	mpUint8       = 0xcc
	mpUint16      = 0xcd
)

// appendEnvelope appends the envelope head of a payload of version ver:
// the 2-array header and ver as the shortest msgpack unsigned integer.
func appendEnvelope(dst []byte, ver uint16) []byte {
	dst = append(dst, envelopeArray)
	switch {
	case ver <= 0x7f:
		return append(dst, byte(ver))
	case ver <= 0xff:
		return append(dst, mpUint8, byte(ver))
	default:
		return binary.BigEndian.AppendUint16(append(dst, mpUint16), ver)
	}
}

// splitEnvelope returns the schema version and the body of a payload.
func splitEnvelope(p []byte) (ver uint16, body []byte, err error) {
	if len(p) == 0 || p[0] != envelopeArray {
		return 0, nil, errors.New("payload is not a msgpack array of 2")
	}
	v, n, ok := readUint(p[1:])
	if !ok || v == 0 || v > math.MaxUint16 {
		return 0, nil, errors.New("schema version is not an integer in 1..65535")
	}
	if len(p) == 1+n {
		return 0, nil, errors.New("payload has no body")
	}
	return uint16(v), p[1+n:], nil
}

// readUint reads a non-negative msgpack integer in any of its encodings
// and returns it with its encoded length.
func readUint(b []byte) (v uint64, n int, ok bool) {
	if len(b) == 0 {
		return 0, 0, false
	}
	c := b[0]
	if c <= 0x7f {
		return uint64(c), 1, true
	}
	if c < 0xcc || c > 0xd3 {
		return 0, 0, false
	}
	width := 1 << ((c - 0xcc) & 3) // uint8..uint64 are 0xcc..0xcf, int8..int64 0xd0..0xd3
	if len(b) < 1+width {
		return 0, 0, false
	}
	var u uint64
	for _, x := range b[1 : 1+width] {
		u = u<<8 | uint64(x)
	}
	if c >= 0xd0 && u>>(8*width-1) != 0 { // signed and negative
		return 0, 0, false
	}
	return u, 1 + width, true
}

// fenceTokenArray starts the 3-element fence, which carries StartRun's
// idempotency token.
const fenceTokenArray = 0x93

// EncodeFence returns the payload of a FenceType event: a msgpack array
// [generation, reason] (frozen; see the package doc).
func EncodeFence(generation uint64, reason string) []byte {
	b, err := marshalAppend([]byte{envelopeArray}, generation)
	if err == nil {
		b, err = marshalAppend(b, reason)
	}
	if err != nil {
		panic(err) // encoding a uint64 and a string into memory cannot fail
	}
	return b
}

// DecodeFence decodes a FenceType payload strictly (ErrMalformed).
func DecodeFence(p []byte) (generation uint64, reason string, err error) {
	if len(p) == 0 || p[0] != envelopeArray && p[0] != fenceTokenArray {
		return 0, "", fmt.Errorf("%w: fence is not a msgpack array of 2 or 3", ErrMalformed)
	}
	generation, n, ok := readUint(p[1:])
	if !ok {
		return 0, "", fmt.Errorf("%w: fence generation is not a non-negative integer", ErrMalformed)
	}
	rest := p[1+n:]
	if len(rest) == 0 || !isStr(rest[0]) {
		return 0, "", fmt.Errorf("%w: fence reason is not a string", ErrMalformed)
	}
	r := bytes.NewReader(rest)
	d := msgpack.GetDecoder()
	d.Reset(r)
	reason, err = d.DecodeString()
	if err == nil && p[0] == fenceTokenArray {
		_, err = d.DecodeString() // the idempotency token
	}
	msgpack.PutDecoder(d)
	if err == nil && r.Len() != 0 {
		err = errTrailing
	}
	if err != nil {
		return 0, "", fmt.Errorf("%w: fence: %w", ErrMalformed, err)
	}
	return generation, reason, nil
}

// isStr reports whether c starts a msgpack str.
func isStr(c byte) bool { return c >= 0xa0 && c <= 0xbf || c >= 0xd9 && c <= 0xdb }
