// Package segment owns the append-only event log every replica holds: a
// directory of segment files, each a run of record batches (package
// record) in offset order, with a sparse offset index, a time index and a
// per-stream index.
//
// The log knows nothing of Raft, gRPC or the FSM. The FSM appends one
// batch per committed Raft entry (Append), makes the log durable when it
// needs to (Sync), and replays it after a restart (Scan); the server
// streams raw batches to clients (ReadBatches) without decoding them. A
// replay of one stream (StreamBatches, StreamOffset) costs time in
// proportion to that stream's batches plus a lookup per segment, not to
// the size of the log.
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
//     *CorruptionError and never truncated or skipped. With
//     Options.OpenDamaged such a segment is kept as damaged instead: its
//     readers get the error, never fewer batches.
//   - A sealed segment changes only through ReplaceSealed, which verifies
//     the whole replacement (CRCs, offsets, end offset, size), rebuilds
//     its index files from it and publishes it atomically; readers that
//     hold the old segment keep its files (reference counts) until they
//     are done.
//   - The log loses only a prefix, and only whole sealed segments:
//     DropSealed removes the oldest sealed segment (retention decides it
//     in the FSM, through Raft); a read below FirstOffset is an
//     *OffsetCompactedError naming the new first offset, and readers that
//     hold the dropped segment keep preading it. Offsets are never reused.
//   - Every segment's digest is the CRC-32C of its .log bytes (Digest):
//     replicas' sealed segments are byte-identical, so their digests are
//     equal, and comparing them finds a replica that differs.
//
// # Concurrency
//
// One writer (Append, Sync, Close; serialized by a mutex) and any number
// of concurrent readers (ReadBatches, Scan, OffsetForTime, StreamBatches,
// StreamOffset, Segments, Verify, VerifySegment, OpenSealed). Readers take
// a read lock only to look up a segment (and, in the active segment, its
// in-memory index entry) and a reference on it, then pread with
// File.ReadAt, a sealed segment's index files included, so they keep
// working on a segment that is being sealed, replaced or dropped.
// ReplaceSealed and DropSealed run beside the writer (they never touch the
// active segment) and are serialized with each other. Every full read of a
// segment goes through one batch walker (walk.go).
//
// # Memory
//
// What a Log holds does not grow with the bytes of sealed segments. Per
// sealed segment it holds a constant: its offsets, sizes and timestamps,
// three open files (.log, .index, .streams) and the .streams directory,
// one record per distinct stream in the segment (38 bytes plus the name
// on disk), which is the one per-segment cost that grows with the data:
// with the stream count of a segment. The sparse indexes of sealed
// segments stay in their files and are read with pread per lookup
// (through the page cache); the active segment keeps its sparse index
// and stream index in memory, bounded by SegmentBytes. Open reads the
// first and last entries of each sealed index file, not the whole file.
//
// # Files (frozen)
//
// A data directory holds, for a segment whose first offset is B (written
// as 20 zero-padded decimal digits):
//
//	<B>.log        concatenated record batches, nothing else
//	<B>.index      sparse offset index
//	<B>.timeindex  sparse time index
//	<B>.streams    per-stream index (sealed segments only)
//	<B>.tiered     marker of a tiered segment, in place of <B>.log
//	*.tmp          a file being published (<B>.log.replace.tmp: a
//	               replacement of a sealed .log); removed at Open
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
// Index files are written when a segment is sealed, .index and
// .timeindex also at Close (tmp, fsync, rename, fsync directory). Open
// checks a sealed segment's .index and .timeindex without reading them
// whole: the sizes (a positive multiple of 8, and 12 bytes per entry),
// entry 0 and the last entry of each (they agree, the last points inside
// the log), and that the batches after the last entry verify, which
// gives the segment's end; anything wrong or a missing file means a
// rebuild from the log. It always rebuilds the active segment's indexes
// from its full scan. Only the active segment's sparse index is held in
// memory: lookups in a sealed segment pread its .index (or .timeindex)
// file, first the entries around an interpolated guess, then by
// bisection, and check the entries they read (order, positions inside the
// log, entry 0, the two files agreeing). A lookup that finds an entry out
// of order, or an entry that does not match the batch it points at, is a
// *CorruptionError naming the .index file (delete it and reopen to
// rebuild); it never returns another batch. Verify checks every entry.
//
// # Stream index (frozen, version 1)
//
// For every stream, a segment's stream index has one entry per batch that
// holds at least one record of the stream, in offset order. Records with
// an empty stream name or StreamVersion 0 are not indexed. The active
// segment keeps its entries in memory, built on Append and by Open's scan.
// Sealing writes them to <B>.streams; from then on only the file's
// directory (one record per stream) is in memory and entries are read
// with pread on demand. All integers are big-endian; CRCs are CRC-32C
// (Castagnoli).
//
// Header, 52 bytes:
//
//	offset size field
//	0      4    magic             "TSSI"
//	4      1    version           1
//	5      3    reserved          0
//	8      8    base offset       B
//	16     8    next offset       NextOffset of the segment's last batch
//	24     8    log size          bytes of <B>.log
//	32     4    stream count      S
//	36     4    entry count       E, all streams together
//	40     4    directory size    D bytes
//	44     4    directory crc     CRC of the D directory bytes
//	48     4    header crc        CRC of bytes [0, 48)
//
// Directory, D bytes at position 52: S records sorted by stream name
// (bytewise, strictly increasing), each 38+n bytes:
//
//	offset size field
//	0      1    name length       n, 1..255
//	1      n    name              the stream
//	1+n    4    entry count       c >= 1
//	5+n    8    min version       smallest StreamVersion of its entries
//	13+n   8    max version       largest
//	21+n   8    first offset      base offset of its first batch
//	29+n   8    end offset        offset after its last batch's span
//	37+n   1    flags             bit 0: some entry's last version is below
//	                              the one before (lookups scan, not bisect);
//	                              others 0
//
// Entries, at position 52+D: the streams' entries back to back, in
// directory order, each stream's in offset order; stream k's start at
// index c0+...+c(k-1). They are cut into blocks of StreamsBlockEntries
// (128) entries, each followed by the CRC of its entry bytes; only the
// last block may be shorter. Entry i is at position
// 52 + D + (i/128)*(128*32+4) + (i%128)*32, and the file is exactly
// 52 + D + 32*E + 4*ceil(E/128) bytes. An entry is 32 bytes:
//
//	offset size field
//	0      4    relative offset   batch base offset - B
//	4      4    position          byte position of the batch in <B>.log
//	8      4    size              batch size in bytes
//	12     4    last delta        the batch spans [base, base+last delta]
//	16     8    first version     smallest StreamVersion of the stream's
//	                              records in the batch
//	24     8    last version      largest
//
// The file is a function of the .log alone, so a rebuilt file equals the
// lost one byte for byte. Open checks the header, its base offset, log
// size and next offset against the segment, the exact file size and the
// directory (CRC, order, ranges, counts); anything wrong or a missing file
// means a rebuild by a full scan of the segment, which also decodes every
// record. Entry blocks are checked when read: a bad block CRC, or an entry
// that does not match the batch it points at, is a *CorruptionError
// naming the .streams file (delete it and reopen to rebuild). Verify
// compares every .streams file with one rebuilt from its log.
//
// # Tiered segments (frozen, version 1)
//
// A sealed segment whose .log lives in an object store (cold tiering,
// Evict) keeps its .index, .timeindex and .streams files; its .log is
// replaced by <B>.tiered, a marker naming the object, and its bytes are
// read through Options.Remote (ranged reads; every batch CRC is still
// checked by the reader). All integers big-endian, the CRC is CRC-32C:
//
//	offset size field
//	0      4    magic             "TSTR"
//	4      1    version           1
//	5      3    reserved          0
//	8      8    base offset       B
//	16     8    next offset       NextOffset of the segment's last batch
//	24     8    log size          bytes of the object (the evicted .log)
//	32     4    log crc           CRC-32C of those bytes (the segment digest)
//	36     8    first timestamp   the first batch's timestamp
//	44     44   last header       the last batch's header, as package record
//	                              draws it (next offset, last timestamp and
//	                              raft index for Open, without a read)
//	88     2    key length        n, 1..1024
//	90     n    key               the object key
//	90+n   4    marker crc        CRC of bytes [0, 90+n)
//
// Evict publishes the marker (tmp, fsync, rename, fsync directory) before
// it removes the .log, so a crash leaves the .log, the marker, or both;
// Open removes a marker that has its .log beside it (the local copy wins).
// With good index files, Open of a tiered segment reads nothing of the
// object; index files it doubts are taken from the segment's index
// bundle in the store (below), else rebuilt from the object. A missing or
// short object, and bytes that fail a batch CRC, are a *CorruptionError
// whose Key names the object (and that names no segment to repair from a
// peer: every replica reads the same object).
//
// A snapshot moves a tiered segment between nodes as its local files
// (TieredPaths: marker, .index, .timeindex, .streams), never its bytes:
// InstallTiered publishes them into a log directory that is not open,
// after checking them against the reference without the object (the
// marker's CRC and fields, the index files as Open checks them), index
// files first and the marker last, each tmp, fsync, rename, then an
// fsync of the directory.
//
// # Index bundles (frozen, version 1)
//
// An index bundle is one object holding a sealed segment's three index
// files byte for byte (IndexBundle builds it from the local files; the
// server uploads it beside the segment's object). A node whose tiered
// segment's index files are missing or fail Open's checks fetches it
// (RemoteIndexer) instead of reading the whole object to rebuild them.
// All integers big-endian, CRCs CRC-32C. Header, 36 bytes:
//
//	offset size field
//	0      4    magic             "TSIB"
//	4      1    version           1
//	5      3    reserved          0
//	8      8    base offset       B
//	16     8    next offset       NextOffset of the segment's last batch
//	24     8    log size          bytes of <B>.log (the object)
//	32     4    header crc        CRC of bytes [0, 32)
//
// Then exactly three sections, in this order, and nothing after them:
// kind 1 the .index file, kind 2 the .timeindex file, kind 3 the
// .streams file. Each is a 12-byte frame and the file's n bytes:
//
//	offset size field
//	0      1    kind              1, 2 or 3
//	1      3    reserved          0
//	4      4    length            n
//	8      4    crc               CRC of the frame's bytes [0, 8) and the
//	                              n bytes
//	12     n    the file
//
// DecodeIndexBundle refuses, as a *CorruptionError, a bundle that fails
// any of this, that names another segment (base, next or log size), or
// whose files fail the checks of a full decode (every .index and
// .timeindex entry, the whole .streams file, whose header must name the
// same segment). A bundle is at most MaxIndexBundle bytes (a limit, not
// part of the format): larger ones are neither built nor fetched, and
// the files are rebuilt from the object. Fetched files are published
// like rebuilt ones (each tmp, fsync, rename, then an fsync of the
// directory) and opened with Open's checks.
//
// The constants IndexEntrySize, TimeIndexEntrySize, StreamsMagic,
// StreamsVersion, StreamsHeaderSize, StreamEntrySize, StreamsBlockEntries,
// TieredMagic, TieredVersion, MaxTieredKey, IndexBundleMagic,
// IndexBundleVersion, the file suffixes and the 20-digit name width are
// frozen.
package segment
