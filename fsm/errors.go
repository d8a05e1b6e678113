package fsm

import (
	"errors"
	"fmt"
)

// Sentinel errors. Handlers map them to gRPC codes at the edge; inside the
// store, check them with errors.Is.
var (
	// ErrSequenceGap: a producer's append skips sequence numbers.
	ErrSequenceGap = errors.New("producer sequence gap")
	// ErrDuplicateSequence: a retry of an append that committed too long ago
	// for its offsets to be known. It is never written twice.
	ErrDuplicateSequence = errors.New("duplicate producer sequence")
	// ErrWrongExpectedVersion: an optimistic-concurrency check failed.
	ErrWrongExpectedVersion = errors.New("wrong expected stream version")
	// ErrInvalidEvent: an event or request breaks a format rule.
	ErrInvalidEvent = errors.New("invalid event")
	// ErrUnknownCommand: the Raft entry is not a command this version knows.
	ErrUnknownCommand = errors.New("unknown command")
	// ErrStorageFailed: writing to the segment log failed. The FSM stops
	// applying (sticky) and the node must restart to recover from the Raft log.
	ErrStorageFailed = errors.New("fsm storage failed")
	// ErrDataLoss: the segment log ends before state that was made durable
	// (a checkpoint or snapshot) says it must. The node must not serve.
	ErrDataLoss = errors.New("segment data lost")
	// ErrChecksumMismatch: an append's events do not match the end-to-end
	// checksum the producer (or the leader) computed: the entry was damaged
	// between them and this replica. The replica stops applying rather
	// than write different bytes from the other replicas.
	ErrChecksumMismatch = errors.New("event checksum mismatch")
	// ErrSegmentDamaged: a sealed segment of the log is known to be
	// damaged (segment.Options.OpenDamaged), so no snapshot is taken until
	// it is repaired: a snapshot would link the bad bytes and ship them to
	// followers. The error wraps the segment's *segment.CorruptionError.
	ErrSegmentDamaged = errors.New("sealed segment damaged")
	// ErrBadSnapshot: a snapshot stream is malformed.
	ErrBadSnapshot = errors.New("bad snapshot")
	// ErrNodeRemoved: a node registered with an incarnation that was
	// removed from the cluster (a tombstone in the node table). Only that
	// registration is refused; the processor keeps applying.
	ErrNodeRemoved = errors.New("node incarnation was removed from the cluster")
	// ErrFenced: an append to a training run carried a generation other
	// than the run's current one (a zombie of an older job attempt), or
	// a generation for a stream that is not a run (runs.go).
	ErrFenced = errors.New("run generation fenced")
	// ErrInvalidPolicy: a retention policy with a negative limit, or none.
	ErrInvalidPolicy = errors.New("invalid retention policy")
	// ErrStalePlan: a compaction cut planned under other retention
	// policies than the current ones; the leader plans again.
	ErrStalePlan = errors.New("compaction plan made under older retention policies")
	// ErrBadCut: a compaction cut that is not the end of a sealed segment
	// still kept.
	ErrBadCut = errors.New("compaction cut is not a sealed segment's end")
	// ErrBadTier: a "segment tiered" decision that does not match a
	// sealed segment of the manifest (its range, size or digest), or one
	// already tiered under another key.
	ErrBadTier = errors.New("tiered object does not match a sealed segment of the manifest")
)

// SequenceGapError carries the sequence the producer must send next.
type SequenceGapError struct {
	Producer      string
	Expected, Got uint64
}

func (e *SequenceGapError) Error() string {
	if e.Expected == 1 {
		return fmt.Sprintf("producer %q: sequence gap: expected 1, got %d: the producer is unknown (never seen, or expired after appending nothing for longer than the producer TTL); start a new sequence at 1", e.Producer, e.Got)
	}
	return fmt.Sprintf("producer %q: sequence gap: expected %d, got %d", e.Producer, e.Expected, e.Got)
}
func (e *SequenceGapError) Unwrap() error { return ErrSequenceGap }

// DuplicateSequenceError is returned for a retry outside the dedup window.
type DuplicateSequenceError struct {
	Producer string
	Seq      uint64
	LastSeq  uint64
}

func (e *DuplicateSequenceError) Error() string {
	return fmt.Sprintf("producer %q: sequence %d already committed (last %d) and older than the dedup window", e.Producer, e.Seq, e.LastSeq)
}
func (e *DuplicateSequenceError) Unwrap() error { return ErrDuplicateSequence }

// WrongExpectedVersionError carries the stream's actual version.
type WrongExpectedVersionError struct {
	Stream   string
	Expected string
	Actual   uint64
}

func (e *WrongExpectedVersionError) Error() string {
	return fmt.Sprintf("stream %q: expected version %s, actual %d", e.Stream, e.Expected, e.Actual)
}
func (e *WrongExpectedVersionError) Unwrap() error { return ErrWrongExpectedVersion }

func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidEvent, fmt.Sprintf(format, args...))
}
