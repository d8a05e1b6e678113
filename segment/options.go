package segment

import (
	"fmt"
	"time"
)

// Limits on Options.
const (
	// MinSegmentBytes is the smallest roll threshold (small values are for tests).
	MinSegmentBytes = 4 << 10
	// MaxSegmentBytes is the largest roll threshold. Together with
	// record.MaxBatchSize it keeps every file position below 1<<32, which
	// the .index format relies on.
	MaxSegmentBytes = 1 << 30
	// MaxIndexIntervalBytes bounds the sparse index spacing.
	MaxIndexIntervalBytes = 1 << 20
)

// Options configures a Log. Start from DefaultOptions.
type Options struct {
	// SegmentBytes is the roll threshold in bytes: a batch that would grow
	// a non-empty active segment past it goes to a new segment. A segment
	// may exceed it by one batch only when that batch alone is larger.
	// Default 64 MiB; must be in [MinSegmentBytes, MaxSegmentBytes].
	SegmentBytes int64
	// IndexIntervalBytes is the number of log bytes between sparse index
	// entries. Smaller means bigger indexes and shorter scans on lookup.
	// Default 4096 bytes; must be in [1, MaxIndexIntervalBytes].
	IndexIntervalBytes int
	// OpenDamaged makes Open keep a sealed segment that fails its checks
	// (a *CorruptionError) instead of failing: the segment is recorded as
	// damaged (Damaged, Recovery().Damaged), its offsets stay in the log,
	// every read that needs it returns the corruption error, and
	// ReplaceSealed can swap in a good copy from another replica. Nothing
	// of a damaged segment is rewritten. Off, Open fails on the first
	// damaged sealed segment, as `tsstore verify` wants.
	OpenDamaged bool
	// Remote opens the objects tiered segments' bytes live in (Evict,
	// reads of tiered segments). Nil (an offline tool): tiered segments
	// open from their markers, their reads fail with ErrNoRemote, Verify
	// skips their bytes, and Evict fails.
	Remote Remote
	// FS is the filesystem seam every file operation goes through. Nil
	// means the operating system's filesystem (OSFS).
	FS FS
	// OnHold, if set, is told how long a change of the sealed segments
	// (op "drop": DropSealed; "swap": ReplaceSealed, ThinSealed, Evict)
	// held the lock that appends take, after it released it. The I/O of
	// these changes happens outside that lock; this is the wait an append
	// could have seen.
	OnHold func(op string, held time.Duration)
}

// DefaultOptions returns the production defaults.
func DefaultOptions() Options {
	return Options{SegmentBytes: 64 << 20, IndexIntervalBytes: 4096}
}

// Validate reports the first out-of-range field.
func (o Options) Validate() error {
	switch {
	case o.SegmentBytes < MinSegmentBytes || o.SegmentBytes > MaxSegmentBytes:
		return fmt.Errorf("segment: SegmentBytes %d bytes not in [%d, %d]", o.SegmentBytes, MinSegmentBytes, MaxSegmentBytes)
	case o.IndexIntervalBytes < 1 || o.IndexIntervalBytes > MaxIndexIntervalBytes:
		return fmt.Errorf("segment: IndexIntervalBytes %d bytes not in [1, %d]", o.IndexIntervalBytes, MaxIndexIntervalBytes)
	}
	return nil
}
