package segment

import (
	"errors"
	"fmt"

	"github.com/tsstore/tsstore/record"
)

// Errors returned by the log. Check them with errors.Is; the wrapping
// message says which file, offset or position was involved.
var (
	// ErrCorrupt marks bytes on disk that are not what the log wrote: a
	// CRC mismatch, an impossible header, a batch at the wrong offset, a
	// gap between segments. It wraps record.ErrCorrupt, so callers may
	// check either. Errors carrying it are *CorruptionError values.
	ErrCorrupt = fmt.Errorf("segment: corrupt log: %w", record.ErrCorrupt)
	// ErrWriteFailed is sticky: after a failed write or fsync the Log
	// refuses every later Append and Sync, because the page cache and the
	// file may no longer agree. Reopen the log to recover.
	ErrWriteFailed = errors.New("segment: earlier write failed; log is read-only until reopened")
	// ErrOffsetMismatch means an appended batch does not start at NextOffset.
	ErrOffsetMismatch = errors.New("segment: batch base offset is not the next offset")
	// ErrTimestampOrder means an appended batch is older than the last one.
	ErrTimestampOrder = errors.New("segment: batch timestamp goes backwards")
	// ErrInvalidBatch means Append was handed bytes that are not exactly one
	// verified batch. The log is unchanged.
	ErrInvalidBatch = errors.New("segment: invalid batch")
	// ErrOffsetCompacted means a read asked for an offset below FirstOffset.
	ErrOffsetCompacted = errors.New("segment: offset no longer stored")
	// ErrClosed means the Log has been closed.
	ErrClosed = errors.New("segment: log closed")
)

// CorruptionError says where corruption was found. It matches ErrCorrupt
// (and so record.ErrCorrupt) under errors.Is.
type CorruptionError struct {
	// Path is the file holding the bad bytes (a .log, .index, .timeindex
	// or .streams), or the .tiered marker of a tiered segment.
	Path string
	// Key is the object key of a tiered segment whose bytes, read from
	// the object store, are bad or missing; empty for local files.
	Key string
	// Position is the byte position in Path where the bad data starts.
	Position int64
	// Offset is the log offset expected at Position.
	Offset uint64
	// Reason says what was wrong.
	Reason string
}

func (e *CorruptionError) Error() string {
	if e.Key != "" {
		return fmt.Sprintf("segment: corrupt %s (tiered object %q) at position %d (offset %d): %s", e.Path, e.Key, e.Position, e.Offset, e.Reason)
	}
	return fmt.Sprintf("segment: corrupt %s at position %d (offset %d): %s", e.Path, e.Position, e.Offset, e.Reason)
}

// Unwrap makes errors.Is(err, ErrCorrupt) and errors.Is(err,
// record.ErrCorrupt) hold.
func (e *CorruptionError) Unwrap() error { return ErrCorrupt }

func corruptf(path string, pos int64, off uint64, format string, args ...any) error {
	return &CorruptionError{Path: path, Position: pos, Offset: off, Reason: fmt.Sprintf(format, args...)}
}

// OffsetCompactedError is the error of a read below FirstOffset. It
// matches ErrOffsetCompacted under errors.Is and tells the caller where
// the log now starts.
type OffsetCompactedError struct {
	Offset      uint64 // the offset asked for
	FirstOffset uint64 // the first offset still stored
}

func (e *OffsetCompactedError) Error() string {
	return fmt.Sprintf("%v: offset %d, first stored offset %d", ErrOffsetCompacted, e.Offset, e.FirstOffset)
}

// Unwrap makes errors.Is(err, ErrOffsetCompacted) hold.
func (e *OffsetCompactedError) Unwrap() error { return ErrOffsetCompacted }
