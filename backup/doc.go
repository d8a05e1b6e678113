// Package backup owns the backup file: a consistent cut of a tsstore
// cluster at one Raft index, as written by `tsstore backup` and read by
// `tsstore restore`. It knows nothing of Raft or gRPC; the cut itself is
// the FSM's snapshot stream (package fsm), carried byte for byte.
//
// # File format (frozen, version 1)
//
// All integers are big-endian.
//
//	offset   size  field
//	0        8     magic "TSBACKUP"
//	8        4     version = 1
//	12       4     info length N, 1..65536
//	16       N     info: a JSON object (Info: cluster, node_id, raft_index,
//	               raft_term, next_offset, size_bytes, created_unix_nano)
//	16+N     S     the snapshot stream (package fsm, "TSSNAP01" ...),
//	               S = info.size_bytes
//	16+N+S   8     trailer magic "TSBKEND1"
//	24+N+S   8     L = 16+N+S, the length of everything before the trailer
//	32+N+S   32    SHA-256 of those L bytes
//
// The file is exactly 16+N+S+48 bytes. Open checks magic, version, the
// info, the trailer's magic and length against the file's size and the
// info's size_bytes, and the SHA-256 of the whole body before it hands out
// a single byte of the stream: a truncated, extended or altered file is
// refused with ErrCorrupt (errors say which part is wrong), before a
// restore writes anything.
//
// The constants Magic, Version, TrailerMagic, PrefixSize, TrailerSize and
// MaxInfoSize are frozen. A future version changes Version and keeps the
// prefix layout, so old readers refuse it with a clear message.
//
// # Invariants
//
//   - The stream is a snapshot stream as fsm.Processor.Restore reads it;
//     Info.RaftIndex and Info.RaftTerm are the Raft snapshot's index and
//     term, Info.NextOffset the offset of the first event after the cut.
//   - Writer refuses to finish a file whose stream is not exactly
//     Info.SizeBytes long, so a backup cut short by a dropped connection is
//     never published.
package backup
