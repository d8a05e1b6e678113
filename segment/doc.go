// Package segment owns the append-only event log every replica holds: a
// directory of segment files, each a run of record batches (package
// record) in offset order, with a sparse offset index and a time index.
//
// The log knows nothing of Raft, gRPC or the FSM. The FSM appends one
// batch per committed Raft entry (Append), makes the log durable when it
// needs to (Sync), and replays it after a restart (Scan); the server
// streams raw batches to clients (ReadBatches) without decoding them.
//
// # Invariants
//
//   - Offsets are dense across the log: every batch starts at the
//     NextOffset of the batch before it, also across segment files, and a
//     segment's file name is the base offset of its first batch.
//   - Batch timestamps never decrease across the log (the FSM clamps them;
//     Append refuses a batch older than the last).
//   - Only the last segment (the active one) changes. Every other segment
//     is sealed: its .log was fsynced and its index files published before
//     the next segment was created, and it is never written again, so it
//     can be linked into a snapshot, copied to another tier or replaced by
//     compaction as a whole file.
//   - Readers see only complete batches: the active segment's size is
//     published after its write returns, and reads never go past it.
//   - After a failed write or fsync the Log is read-only (ErrWriteFailed)
//     until reopened; Open then repairs the tail.
//   - At Open, a torn or corrupt tail of the active segment is truncated
//     (a crash leaves it); corruption in a sealed segment is reported as a
//     *CorruptionError and never truncated or skipped.
//
// # Concurrency
//
// One writer (Append, Sync, Close; serialized by a mutex) and any number
// of concurrent readers (ReadBatches, Scan, OffsetForTime, Segments,
// Verify). Readers take a read lock only to look up a segment and its
// index, then pread with File.ReadAt, so they keep working on a segment
// that is being sealed.
//
// # Files (frozen)
//
// A data directory holds, for a segment whose first offset is B (written
// as 20 zero-padded decimal digits):
//
//	<B>.log        concatenated record batches, nothing else
//	<B>.index      sparse offset index
//	<B>.timeindex  sparse time index
//	*.tmp          a file being published; removed at Open
//
// A .log file is record batches back to back, as drawn in package record,
// with no file header or trailer:
//
//	position 0       batch [B, B+n0)
//	position s0      batch [B+n0, ...)
//	...
//
// A .index file is a sequence of 8-byte entries, big-endian:
//
//	offset size field
//	0      4    relative offset   batch base offset - B
//	4      4    position          byte position of that batch in <B>.log
//
// A .timeindex file is a sequence of 12-byte entries, big-endian:
//
//	offset size field
//	0      8    timestamp         the batch's timestamp, unix nanoseconds
//	8      4    relative offset   batch base offset - B
//
// Entry i of both files describes the same batch. The first entry is
// always the segment's first batch (relative offset 0, position 0); after
// that a batch gets an entry when it starts at least IndexIntervalBytes
// after the previous entry's batch. Relative offsets and positions
// strictly increase, timestamps do not decrease. The rule is
// deterministic, so an index rebuilt from the log equals the lost one.
// Positions fit in 32 bits because SegmentBytes <= 1 GiB and a batch is
// at most record.MaxBatchSize; relative offsets fit because Append rolls
// before a segment spans more than 1<<32 offsets.
//
// Index files are written when a segment is sealed and at Close (tmp,
// fsync, rename, fsync directory). Open trusts a sealed segment's index
// files if they pass the structural checks (sizes, order, positions inside
// the file) and the batches after the last entry verify, and otherwise
// rebuilds them from the log; it always rebuilds the active segment's
// index from its full scan. All indexes are also held in memory.
//
// The constants IndexEntrySize, TimeIndexEntrySize, the file suffixes and
// the 20-digit name width are frozen.
package segment
