// Package jepsen is tsstore's fault-injection harness: Jepsen's method,
// in Go, against real `tsstore serve` processes on loopback.
//
// # Method
//
// A run starts a fresh three-node cluster (internal/proccluster) whose
// Raft links each pass through a TCP proxy owned by the harness: node A
// reaches node B only through the proxy A->B (tsstore serve
// --raft-dial-override). Clients concurrently append unique values, read
// and subscribe, and record every operation with its invocation and
// completion time and outcome (ok, fail, or unknown when it may or may not
// have taken effect). Meanwhile a nemesis follows a fault schedule drawn
// from the seed: process faults by PID (SIGKILL, SIGTERM, SIGSTOP/SIGCONT,
// restart, wipe-and-rejoin), membership changes (remove a node, add it
// back), network faults on the proxies (isolate the leader or a follower,
// bridge, one-way loss, flapping, slow or stalled links), disk faults (a faultfs build that loses unsynced writes of the
// segment log and of the Raft log on a kill; bit flips and truncations of segment files), full disks
// (each node's data directory on a small tmpfs of its own, filled to just below its free-space
// watermark or completely, diskfault.go), leadership transfers and snapshot installs. Then everything is healed, the cluster
// must accept an append again, all nodes must converge on one log end,
// and the whole log is replayed from every node. The checkers judge the
// history against those replicas.
//
// Partitions cut Raft traffic only: clients reach every node directly, and
// nodes' API-to-API calls (append forwarding, ReadIndex) are not proxied.
// Membership changes go through the Cluster service (RemoveMember,
// AddMember, PromoteMember): a removed node must exit with status 78, and
// again when restarted on its old data; it rejoins only wiped, without
// bootstrap peers, under its old id and raft address, so the proxies keep
// carrying its links and the final checks cover it like any replica.
//
// # Workload
//
// Six appenders use SDK producers (idempotent: a retry of an append with
// an unknown outcome carries the same producer sequence); two call the raw
// gRPC Append with an empty producer id and retry on their own, so their
// retries may duplicate, which is reported but is not a violation. Every
// fourth acknowledged idempotent append is read back through the same
// client (read-your-writes: min_next_offset). One reader replays from
// offset 0, one from just below the newest acknowledged offset, half the
// time linearizably. Two tail subscribers use the Subscribe RPC, resuming
// from the last delivered offset + 1 after any error (if the server has
// no Subscribe they emulate it with repeated Reads and the history says
// so).
//
// The fencing scenario adds training runs (fencing.go): per run an
// orchestrator calls StartRun again and again, each call recorded with
// its outcome and generation, and starts a writer with each generation it
// gets; the writer it replaced keeps appending with its old generation
// for a while, a zombie. Writers append through producers of their own,
// each payload naming the run, writer, generation and sequence.
//
// # Invariants checked (Check)
//
//  1. Every acknowledged append is in the final log at its acknowledged
//     offset, on every replica; losses are classified prefix, middle or
//     postfix per node.
//  2. Acknowledgements, reads and replicas never give one offset two
//     values.
//  3. No value is stored twice (idempotent appends); duplicates from
//     non-idempotent retries are counted separately.
//  4. Nothing unexpected: every stored value was appended by someone, a
//     definitely failed append is never stored, an unknown one is stored
//     at most once, multi-event appends are all-or-nothing.
//  5. No gaps: replicas are contiguous from 0 and every successful read
//     from offset k equals the final log from k; a client-side integrity
//     error (gap, overlap, bad checksum) is a violation.
//  6. Real-time order: an append acknowledged before another was invoked
//     has the lower offset.
//  7. No stale reads, for reads that promise freshness only: linearizable
//     reads see every append acknowledged before they started;
//     read-your-writes reads see their min_next_offset and their own
//     process's acknowledged appends. Plain local reads may lag by design.
//  8. Subscriptions deliver consecutive offsets from their start, across
//     resumes, with the final log's values.
//  9. Replicas agree: every node replays the same number of events with
//     the same SHA-256 over the raw batches.
//  10. Fencing (fencing workload only): in every replica's stream of a
//     run, each event carries the generation of the "$fence" before it,
//     the fences are generations 1, 2, 3, ..., every acknowledged
//     StartRun's generation is there (a failed one wrote none), an
//     append refused FENCED is absent and was refused by a newer
//     generation that is there, and replicas hold identical run streams.
//  11. Disk full is a state, not a hang (disk-full scenario only,
//     diskcheck.go): an append refused DISK_FULL is in no replica; every
//     filled node reports its problem or exits; while the leader's or a
//     majority's disk is below the watermark, appends are refused at once
//     (not acknowledged, not left hanging); no node exits 78 for it; no
//     snapshot is streamed to a node that has reported for long enough
//     that its leader knows; within 20 s of the heal every node runs,
//     serves and reports no problem and an append is acknowledged.
//
// Rules 12 and 13 judge the retention and compaction workloads
// (retcheck.go, compcheck.go). Rule 14 (tiercheck.go) judges the tiering
// scenario, whose nodes tier to a real versitygw behind a fault-injecting
// proxy (objstore.go, tiering.go): something was tiered and evicted
// everywhere and the backlog drained; a segment whose object the store
// nemesis deleted or flipped is refused DataLoss naming the key, every
// other range is read whole; manifests, segment digests and verify
// --tiered agree.
//
// A run also fails if it cannot reach its checks: the healed cluster
// accepts no append, or the replicas do not converge within a minute.
//
// # Output
//
// Each run writes results.json (seed, schedule and executed faults,
// counts, checker verdicts, throughput and latency before, during and
// after faults, the longest unavailability, time from each heal to the
// next acknowledged append, leader changes) and history.jsonl (one line
// per operation and fault). Everything is bounded in time; every process
// is killed when a run ends, however it ends; cluster data is removed
// after a valid run and kept (path printed) otherwise.
//
// The command is jepsen/cmd/jepsen; docs/jepsen.md has the runbook.
package jepsen
