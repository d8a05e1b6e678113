// Package fsm is tsstore's Raft state machine: it turns committed Raft
// entries into record batches in the segment log, deterministically, so that
// every replica writes the same bytes.
//
// It owns:
//   - the command encoding (CommandType byte + msgpack; types frozen),
//   - offset assignment (contiguous, in entry and op order),
//   - timestamps (leader-proposed, clamped to never go backwards),
//   - producer idempotency (last sequence and the last DedupWindows appends
//     per producer) and expected-version checks,
//   - the node table (node id -> client API address), each node's
//     incarnation and the tombstones of removed incarnations (membership.go),
//   - snapshots (a manifest of hard-linked segment files plus the state
//     tables) and restore, and the raft.SnapshotStore that links files,
//   - training runs (runs.go): the generation fence every append to a run
//     must pass, and the index of run snapshots ("$fence" and "$snapshot"
//     events; formats frozen there).
//
// Processor does all of this without Raft; FSM adapts it to raft.FSM.
//
// Invariants:
//   - Apply is a pure function of (durable state, entry): same entries in the
//     same order give the same log and state on every replica.
//   - Apply is idempotent by Raft index: append entries at or below the raft
//     index of the last batch in the log (or the checkpoint's index) are
//     skipped; node entries (register, remove) at or below the node file's
//     index are skipped.
//   - A tombstoned incarnation is never registered again (ErrNodeRemoved).
//   - Streams, Producers and Runs are a function of the log's records alone, so a
//     restarted node rebuilds them from the checkpoint plus a scan of the
//     batches after it, with the same code Apply uses (State.applyBatch).
//   - Before a snapshot is taken the log is fsynced, so Raft never drops an
//     entry that is not durable in the segments.
//   - A storage failure stops the processor (sticky); it never applies
//     around a failed write.
//
// The snapshot stream format is drawn in snapshot.go, the checkpoint and
// node files in checkpoint.go. DESIGN.md explains why.
package fsm
