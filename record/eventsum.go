package record

import (
	"encoding/binary"
	"hash/crc32"
	"unsafe"
)

// EventSum is the end-to-end checksum of an append's events: the SDK
// computes it over the events as it sends them, the leader checks it before
// proposing, it travels in the Raft entry, and every replica checks it
// before it writes the events, so a bit flipped anywhere between producer
// and segment (network, Raft log, a follower's disk) is caught instead of
// becoming a replica with different bytes under a valid batch CRC.
//
// Definition (frozen): CRC-32C (Castagnoli), starting from 0, over each
// event in order, each as four fields (stream, type, metadata, payload),
// each field its length as an unsigned varint followed by its bytes.
// Fold events in with AddEvent, starting from 0.
func AddEvent(sum uint32, stream, typ string, metadata, payload []byte) uint32 {
	var n [binary.MaxVarintLen64]byte
	for _, f := range [4][]byte{unsafe.Slice(unsafe.StringData(stream), len(stream)), unsafe.Slice(unsafe.StringData(typ), len(typ)), metadata, payload} {
		sum = crc32.Update(sum, castagnoli, n[:binary.PutUvarint(n[:], uint64(len(f)))])
		sum = crc32.Update(sum, castagnoli, f)
	}
	return sum
}
