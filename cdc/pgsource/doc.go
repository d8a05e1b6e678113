// Package pgsource is the PostgreSQL change-data-capture connector behind
// `tsstore cdc postgres`: it consumes a logical replication slot (pgoutput,
// protocol 1) of a publication and appends every committed transaction to
// tsstore as one atomic append, in commit order, exactly once.
//
// # Streams and events
//
// A transaction of database D becomes one append of:
//
//   - one event per row change, in the order PostgreSQL made them, to the
//     stream <prefix>D/<schema>.<table> (prefix "cdc/" by default):
//     RowInserted, RowUpdated, RowDeleted or TableTruncated, payload a
//     msgpack Change (table, op, columns with types, typed old and new
//     values, the change's LSN, commit LSN, xid, commit time);
//   - a SchemaChanged event (payload Schema) before the first change of a
//     table whose columns differ from the last SchemaChanged stored for it;
//   - last, a marker in the stream <prefix>D: TransactionCommitted (payload
//     Marker: xid, commit LSN, end LSN, commit time, row count, tables).
//
// Every event's metadata is JSON Meta: commit LSN, xid, commit time, slot.
// The initial snapshot is appended in chunks of RowSnapshot events (and a
// SchemaChanged per table), each chunk ending with a SnapshotChunk marker,
// the last with SnapshotCompleted; a connector started without a snapshot
// writes a SlotCreated marker when it creates the slot.
//
// # Exactly once
//
// The producer id is derived from the database and the slot, and the
// producer sequence follows commit order: the connector appends with an
// AsyncProducer (several transactions in flight, acknowledged in order),
// and confirms a transaction's end LSN to PostgreSQL only after tsstore
// acknowledged its append. When a session starts (at start-up, or after
// PostgreSQL or tsstore failed) it reads the last marker from tsstore
// (linearizably): the marker's producer sequence says where the producer
// continues, and its commit LSN which transactions PostgreSQL re-sends
// that are already stored (they are skipped, then confirmed). A crash
// between the append and the confirmation therefore neither loses nor
// duplicates a transaction, and a transaction is never split: it is one
// append, all or nothing.
//
// # Invariants
//
//   - Appends hold whole transactions, in commit order; the marker is the
//     last event of each append, so the last marker names the last stored
//     transaction.
//   - The LSN confirmed to PostgreSQL never passes what tsstore
//     acknowledged (or what was already stored).
//   - A column type without a typed encoding (typeName) stops the
//     connector with ErrUnsupportedType before anything of its
//     transaction is appended; no column is ever dropped.
package pgsource
