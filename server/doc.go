// Package server runs one tsstore node: it wires the FSM to hashicorp/raft
// (raft-wal log, raft-boltdb/v2 stable store, TCP or TLS transport, the FSM's
// hard-link snapshot store) and serves the gRPC API.
//
// It owns:
//   - the Append path: validation at the edge, forwarding to the leader
//     (a follower forwards once, marked so it is never forwarded again),
//     and group commit (proposer.go) that coalesces concurrent requests
//     into one Raft entry with a bounded number of entries in flight;
//   - the Read path: raw record batches straight from the segment log, with
//     local (read-your-writes via min_next_offset) or linearizable
//     (ReadIndex through the leader) consistency; on request
//     (ReadRequest.decoded, read_decoded.go) the selected events decoded,
//     for clients without the batch decoder;
//   - the log schema: hashicorp/raft's, its transport's and raft-wal's
//     hclog lines go through the node's slog logger, with Raft's normal
//     events below ERROR (raftlog.go);
//   - Status, the node table registration, and the mapping of internal
//     errors to gRPC status codes with google.rpc.ErrorInfo details
//     (errors.go), done only at the handler edge;
//   - the data directory's identity (node.json with its incarnation,
//     identity.go) and start-up checks;
//   - cluster membership (membership.go, register.go): Members, AddMember,
//     PromoteMember, RemoveMember and the checks of TransferLeadership;
//     removal tombstones an incarnation first, and a node that finds its
//     own tombstone writes DATA-DIR/removed and stops for good;
//   - Prometheus metrics (metrics.go, metrics_collect.go): a registry per
//     node, served on Config.MetricsAddr; docs/operations.md lists them;
//   - data operations (backup.go, restore.go): the Snapshot and Backup
//     RPCs (a consistent cut streamed from a live node) and the offline
//     Restore that seeds a node of a new cluster from a backup, above the
//     backup's Raft index and term (docs/design.md#backup-and-restore);
//   - self-repair of damaged sealed segments (repair.go,
//     repair_snapshots.go): a node fetches a healthy peer's copy
//     (Repair.FetchSegment), verifies it and swaps it in; found at open, on
//     read, by a backup or snapshot, or on request (Repair.RepairSegments,
//     `tsstore repair`); snapshots are verified as they are sent, so a
//     leader never ships bad bytes to a follower;
//   - security, off by default: TLS for the API, mutual TLS between nodes
//     (a TLS raft.StreamLayer and the node-to-node gRPC calls), and
//     bearer tokens with roles checked by an auth interceptor (tls.go,
//     auth.go; docs/operations.md#security);
//   - what clients can make the node hold: Read and Subscribe messages in
//     gRPC's hands (sendbudget.go, one message per stalled stream), append
//     requests read and not yet answered (reqbudget.go, unary Append served
//     as a stream so that it runs before grpc reads the body), and the cut
//     of connections that stall either while others wait (stallcut.go).
//
// Invariants:
//   - an Append is answered with offsets only after its Raft entry is
//     committed and applied on this (leader) node;
//   - a request that fails before commit may still commit later: callers
//     retry with the same producer sequence and get the original offsets;
//   - every goroutine is started through Node.goFunc and stops when the
//     node's shutdown channel closes;
//   - nothing waits on a raft future without also watching shutdown
//     (Node.await): raft v1.7.2 can leave futures unanswered when it stops.
//   - a removed incarnation never takes part in the cluster again: it
//     cannot register, be promoted or start (docs/design.md#membership).
package server
