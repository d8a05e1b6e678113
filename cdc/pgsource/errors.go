package pgsource

import "errors"

// Errors that stop the connector: Run returns them (wrapped) rather than
// starting another session, because another session would fail the same
// way or lose data.
var (
	// ErrUnsupportedType: a published column's type has no typed encoding
	// (see Change). Nothing of the transaction was written.
	ErrUnsupportedType = errors.New("pgsource: column type cannot be encoded")
	// ErrSnapshotInterrupted: the initial snapshot was cut off after some
	// of it was written; the slot's exported snapshot is gone, so it cannot
	// be finished consistently.
	ErrSnapshotInterrupted = errors.New("pgsource: initial snapshot was interrupted")
	// ErrSlotMissing: tsstore holds this connector's transactions but the
	// slot is gone, so changes since may be lost.
	ErrSlotMissing = errors.New("pgsource: replication slot is missing")
	// ErrForeignProducer: the database's marker stream is written by
	// another producer (another slot or connector).
	ErrForeignProducer = errors.New("pgsource: marker stream written by another producer")
)

// permanent reports whether err must stop Run.
func permanent(err error) bool {
	return errors.Is(err, ErrUnsupportedType) || errors.Is(err, ErrSnapshotInterrupted) ||
		errors.Is(err, ErrSlotMissing) || errors.Is(err, ErrForeignProducer)
}
