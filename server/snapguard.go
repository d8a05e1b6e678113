package server

import (
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/hashicorp/raft"
)

// Snapshot sends to a node that cannot persist back off, and append RPCs
// are bounded in bytes (AppendEntries below).
//
// A follower whose disk is full cannot install a snapshot: it reads the
// whole stream, fails to write it and answers failure, and raft's
// replication sends the whole snapshot again after a backoff of at most
// about ten seconds, for ever: hundreds of megabytes a time over the
// network and from the leader's disk. snapGuard is the leader's Raft
// transport: while the last disk probe of the target (watchVotersDisk,
// every voterDiskEvery, every server of the configuration) says it cannot
// persist, InstallSnapshot fails at once without sending anything. Raft
// counts the failure and retries with its growing backoff, each retry
// now free; once the target reports free space again the next retry
// sends the snapshot, with no restart anywhere. AppendEntries are not
// held back: they are small, and a node that can write again should
// catch up at once.
type snapGuard struct {
	*raft.NetworkTransport
	n *Node
}

// InstallSnapshot implements raft.Transport.
func (g snapGuard) InstallSnapshot(id raft.ServerID, target raft.ServerAddress, args *raft.InstallSnapshotRequest,
	resp *raft.InstallSnapshotResponse, data io.Reader) error {
	if p := g.n.peerDiskProblem(target); p != "" {
		g.n.metrics.snapshotSendsDeferred.Inc()
		return fmt.Errorf("not sending the snapshot at index %d (%d bytes) to %s: it reports it cannot persist (%s); raft retries with backoff",
			args.LastLogIndex, args.Size, id, p)
	}
	err := g.NetworkTransport.InstallSnapshot(id, target, args, resp, data)
	if err != nil && strings.Contains(err.Error(), refuseInstallPhrase) {
		// The target refused before writing: remember it until the next
		// disk probe, so raft's quick retries send nothing either (a node
		// restarted on a full disk answered no probe while it was down).
		g.n.voters.mu.Lock()
		if g.n.voters.peers == nil {
			g.n.voters.peers = map[raft.ServerAddress]string{}
		}
		g.n.voters.peers[target] = err.Error()
		g.n.voters.mu.Unlock()
	}
	return err
}

// AppendEntries implements raft.Transport. Raft bounds an append RPC by
// its number of entries (Config.MaxAppendEntries), not their bytes, so a
// follower catching up on entries of up to max-request-bytes each could
// be sent gigabytes in one RPC: held whole by the leader's send and the
// follower's decode, and kept for good as raft-wal's write buffer, which
// grows to the largest batch it stored. Entries past
// Config.MaxInflightBytes (at least one entry is sent) are left out, and
// the commit index sent is at most the last entry sent: a follower sets
// its commit index to the smaller of the leader's and its own last
// index, which without that cap could be an entry of an older term that
// the entries left out would have replaced. Raft takes the RPC's success
// for the entries it carried (it reads them back from args) and sends
// the rest in its next round.
func (g snapGuard) AppendEntries(id raft.ServerID, target raft.ServerAddress, args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) error {
	if boundAppend(args, g.n.cfg.MaxInflightBytes) {
		g.n.metrics.raftAppendsSplit.Inc()
	}
	return g.NetworkTransport.AppendEntries(id, target, args, resp)
}

// SetHeartbeatHandler implements raft.Transport. Raft handles heartbeats
// on the transport's connection goroutine, not its own: one that passed
// raft's shutdown check just before Node.Close shut raft down could then
// write the term to a stable store Close had just closed, and raft
// panics on that ("failed to save current term: database not open",
// seen in CI). The handler runs under the node's heartbeat guard, which
// Close shuts (waiting for a heartbeat in progress) before it closes the
// stores; a heartbeat after that is answered ErrTransportShutdown.
func (g snapGuard) SetHeartbeatHandler(cb func(raft.RPC)) {
	if cb == nil {
		g.NetworkTransport.SetHeartbeatHandler(nil)
		return
	}
	h := g.n.hbGuard
	g.NetworkTransport.SetHeartbeatHandler(func(rpc raft.RPC) {
		h.mu.RLock()
		defer h.mu.RUnlock()
		if h.closed {
			rpc.Respond(nil, raft.ErrTransportShutdown)
			return
		}
		cb(rpc)
	})
}

// heartbeatGuard lets heartbeats into raft until the node closes.
type heartbeatGuard struct {
	mu     sync.RWMutex
	closed bool
}

// close waits for a heartbeat in progress and lets no other in.
func (h *heartbeatGuard) close() {
	h.mu.Lock()
	h.closed = true
	h.mu.Unlock()
}

// boundAppend leaves out of args the entries past max bytes (counting
// each entry's data and extensions; the first entry always stays) and
// caps its commit index at the last entry kept. It reports whether it
// left any out.
func boundAppend(args *raft.AppendEntriesRequest, max int64) bool {
	var size int64
	for i, e := range args.Entries {
		size += int64(len(e.Data) + len(e.Extensions))
		if i > 0 && size > max {
			args.Entries = args.Entries[:i]
			if last := args.Entries[i-1].Index; args.LeaderCommitIndex > last {
				args.LeaderCommitIndex = last
			}
			return true
		}
	}
	return false
}

// refuseInstallPhrase is in the error a node that cannot persist answers
// InstallSnapshot with (snapStoreGuard); the leader recognizes it.
const refuseInstallPhrase = "this node cannot persist"

// peerDiskProblem is the last disk problem the server at addr reported
// to this node as leader ("" if none or unknown).
func (n *Node) peerDiskProblem(addr raft.ServerAddress) string {
	n.voters.mu.Lock()
	defer n.voters.mu.Unlock()
	return n.voters.peers[addr]
}

// snapStoreGuard is the node's snapshot store as raft sees it: a node
// that cannot persist refuses to install a snapshot from the leader at
// once (Create fails before a byte is written), rather than filling its
// disk with it. A snapshot at or below the FSM's applied index is one this
// node takes itself: cheap (segments are hard links) and what lets raft
// truncate its log, so it is never refused.
type snapStoreGuard struct {
	raft.SnapshotStore
	n *Node
}

// Create implements raft.SnapshotStore.
func (g snapStoreGuard) Create(version raft.SnapshotVersion, index, term uint64, configuration raft.Configuration,
	configurationIndex uint64, trans raft.Transport) (raft.SnapshotSink, error) {
	if index > g.n.proc.AppliedIndex() {
		if p := g.n.diskProblem(); p != "" {
			return nil, fmt.Errorf("refusing to install the snapshot at index %d: %s (%s)", index, refuseInstallPhrase, p)
		}
	}
	return g.SnapshotStore.Create(version, index, term, configuration, configurationIndex, trans)
}
