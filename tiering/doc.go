// Package tiering owns the object stores that sealed segments can be
// tiered to (issue #13): the Target interface and its two
// implementations, a filesystem directory (FSTarget: an NFS mount or
// another disk) and an S3-compatible bucket (S3Target, through
// aws-sdk-go-v2).
//
// Invariants every Target keeps:
//   - A key is written once. Put never overwrites: a second Put of the
//     same key fails with ErrExists (FSTarget links the upload to its
//     name, which fails when the name exists; S3Target heads the key and
//     sends If-None-Match: *). Callers make keys unique per upload
//     attempt, so two leaders never write the same key.
//   - After Put returns nil the object is durable (FSTarget fsyncs the
//     file and its directories; S3 acknowledges a PUT once stored) and
//     holds exactly the bytes whose CRC-32C the caller passed: Put checks
//     the checksum over the bytes it sent and fails with ErrChecksum
//     otherwise, leaving nothing at the key.
//   - Head returns the size and CRC-32C of the object: FSTarget computes
//     it from the stored bytes; S3Target returns the checksum Put stored
//     in the object's metadata, which the store itself checked on upload
//     when it supports x-amz-checksum-crc32c.
//   - Missing objects are ErrNotFound on Head and GetRange; Delete of a
//     missing key succeeds, so a sweep can be repeated.
//
// The checksum is CRC-32C (Castagnoli), the segment digest of
// segment.Log.Digest, so an object can be compared with the manifest's
// digest of the same .log bytes without reading the local copy.
//
// Object metadata (frozen): S3 objects carry x-amz-meta-tsstore-crc32c,
// the CRC-32C as 8 lower-case hex digits.
//
// Cache reads objects back in fixed blocks (ranged GETs) through an
// in-memory LRU capped in bytes, with one GET per block for concurrent
// readers and readahead for sequential ones. Its invariants: it never
// holds more than CapBytes of blocks, never caches an error, and returns
// a block only if the GET returned exactly the bytes the object's size
// says the block holds (else ErrShort).
//
// This package knows nothing of segments, Raft or the FSM: what to
// upload, when, and under which key is the caller's.
package tiering
