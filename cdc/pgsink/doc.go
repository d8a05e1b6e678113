// Package pgsink keeps PostgreSQL tables up to date from tsstore streams:
// `tsstore sink postgres`. It subscribes to the selected events and applies
// them in PostgreSQL transactions, each of which also stores the offset
// after the last event it applied (table tsstore_sink_offsets, one row per
// sink name). A restarted sink continues from that offset, so every event
// is applied exactly once, whatever crashes between the two systems.
//
// Modes:
//
//   - events: every selected event becomes a row of one table (offset,
//     stream, version, type, commit time, metadata, payload).
//   - training: the typed training events of run streams (package
//     client/train) maintain tsstore_runs (one row per run: model, world
//     size, status, last checkpoint step) and tsstore_checkpoints (one row
//     per run, step and rank: URI, size, SHA-256). The view
//     tsstore_checkpoint_agreement answers "did every rank save step N with
//     the same hash?" (column agreed).
//
// Invariants: the offset row and the rows derived from the events up to
// it are written in one PostgreSQL transaction; events are applied in
// offset order; an event the sink cannot decode stops it (nothing of its
// batch is committed).
package pgsink
