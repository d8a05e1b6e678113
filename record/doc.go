// Package record owns the tsstore record-batch format: the unit that is
// written to segment files, shipped inside Raft snapshots, and streamed to
// clients during replay without being re-encoded.
//
// A committed Raft entry is written as one or more consecutive batches
// (the FSM splits an entry so that each batch holds one stream where it
// can); all but the last carry AttrContinued. The package is a leaf: it
// imports nothing from tsstore, so both the storage side (segment/, fsm/)
// and the client SDK (client/) can decode the same bytes.
//
// # Batch layout (frozen, version 1)
//
// All fixed-width integers are big-endian.
//
//	offset size field
//	0      8    base offset     first global offset in the batch
//	8      4    length          bytes that follow this field (crc .. end)
//	12     4    crc             CRC-32C (Castagnoli) of bytes [16, 12+length)
//	16     1    magic           1
//	17     1    attributes      bit 0: control batch (no user records);
//	                            bit 1: continued (more batches of this Raft
//	                            entry follow); bits 2-3: compression of
//	                            the records (0 none, 1 zstd; 2, 3 refused);
//	                            others 0
//	18     2    reserved        0
//	20     4    last delta      last offset in the batch - base offset
//	24     8    raft index      index of the Raft entry that produced the batch
//	32     8    timestamp       unix nanoseconds, monotonic across the log
//	40     4    record count    number of records present, 1 .. last delta+1
//	44     ...  records
//
// A batch spans offsets [base, base+last delta]. A batch as written by the
// FSM holds every offset of its span (count = last delta + 1). A batch
// rebuilt by compaction or by a server-side filter keeps its span but holds
// fewer records, so a reader always knows which offsets it covers and can
// tell a filtered-out or compacted offset from a missing one.
//
// # Compression
//
// With compression bits 1 (zstd), bytes [44, end) hold one zstd frame
// (no content checksum) whose content is the records section below; the
// length and CRC describe the stored, compressed bytes, so the CRC checked
// on disk, by followers and by clients is one and the same. Everything
// else in the header is as uncompressed. Batches written before the flag
// existed have the bits at 0 and read as before; a reader that predates
// the flag cannot read a compressed batch (its records fail to decode),
// so a cluster turns compression on only once its clients are upgraded.
// Compress leaves a batch uncompressed when that is not smaller.
//
// # Record layout (frozen, version 1)
//
// Every field is an unsigned varint (encoding/binary Uvarint) or a
// varint-length-prefixed byte string:
//
//	length          bytes that follow this varint
//	offset delta    record offset - base offset, strictly increasing, <= last delta
//	stream version  1-based version of the stream after this event (0: none)
//	stream          string
//	event type      string
//	producer id     string (empty: not idempotent)
//	producer seq    sequence number of this event for its producer
//	metadata        bytes
//	payload         bytes
//
// The length prefix lets a reader skip a record without decoding it.
package record
