package server

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	pb "github.com/tsstore/tsstore/proto/tsstorev1"
)

// ReadIndex implements the leader side of a linearizable read.
func (s *service) ReadIndex(ctx context.Context, _ *pb.ReadIndexRequest) (*pb.ReadIndexResponse, error) {
	idx, err := s.n.localReadIndex(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.ReadIndexResponse{CommitIndex: idx}, nil
}

// localReadIndex is Raft's ReadIndex on the leader: take the commit index,
// then confirm with a quorum that this node was still leader after taking
// it. The leader must first have applied a barrier in its term, so its
// commit index covers every entry committed by earlier leaders.
func (n *Node) localReadIndex(ctx context.Context) (uint64, error) {
	if n.raft.State() != raft.Leader {
		return 0, raft.ErrNotLeader
	}
	if n.leaderReady.Load() != n.raft.CurrentTerm() {
		return 0, fmt.Errorf("%w: leader has not yet applied its term's barrier", errNoLeader)
	}
	idx := n.raft.CommitIndex()
	if err := n.await(ctx, n.raft.VerifyLeader()); err != nil {
		return 0, err
	}
	if b := n.termBarrier.Load(); b != nil && b.term == n.raft.CurrentTerm() && idx <= b.index {
		// Nothing committed since this term's barrier: the newest entries
		// are the term's no-op and the barrier, which never reach the FSM,
		// so waiting for idx would wait for the next append. Everything
		// the FSM applies up to idx was applied when the barrier returned.
		idx = b.applied
	}
	return idx, ctx.Err()
}

// barrierMark is a leader's barrier of its term: its index, and the FSM's
// applied index once it had returned. Every entry after it in the term is
// a command or a configuration change, which the FSM is told of.
type barrierMark struct {
	term, index, applied uint64
}

// readIndex returns the index a linearizable read on this node must wait
// for, asking the leader when this node is a follower.
func (n *Node) readIndex(ctx context.Context) (uint64, error) {
	if n.raft.State() == raft.Leader {
		return n.localReadIndex(ctx)
	}
	conn, err := n.leaderConn()
	if err != nil {
		return 0, err
	}
	resp, err := pb.NewClusterClient(conn).ReadIndex(ctx, &pb.ReadIndexRequest{})
	if err != nil {
		return 0, err
	}
	return resp.CommitIndex, nil
}

// watchLeadership runs a barrier whenever this node becomes leader, and
// marks the term ready for linearizable reads once it has been applied.
func (n *Node) watchLeadership() {
	for {
		select {
		case isLeader := <-n.raft.LeaderCh():
			if !isLeader {
				continue
			}
			term := n.raft.CurrentTerm()
			f := n.raft.Barrier(10 * time.Second)
			if err := n.await(nil, f); err != nil {
				n.logger.Warn("leader barrier failed", "error", err)
				continue
			}
			if idx, ok := f.(raft.IndexFuture); ok {
				n.termBarrier.Store(&barrierMark{term: term, index: idx.Index(), applied: n.proc.AppliedIndex()})
			}
			n.leaderReady.Store(term)
			n.logger.Info("leader ready", "term", term)
		case <-n.shutdown:
			return
		}
	}
}

// leaderConn returns a client connection to the current leader's API.
func (n *Node) leaderConn() (*grpc.ClientConn, error) {
	_, id := n.raft.LeaderWithID()
	if id == "" {
		return nil, errNoLeader
	}
	if string(id) == n.cfg.NodeID {
		return nil, fmt.Errorf("%w: this node is leader but not yet ready", errNoLeader)
	}
	addr := n.proc.Nodes()[string(id)]
	if addr == "" {
		return nil, fmt.Errorf("%w: leader %s has not registered its api address", errNoLeader, id)
	}
	return n.peers.get(addr)
}

// peerPool caches client connections to other nodes.
type peerPool struct {
	creds credentials.TransportCredentials
	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
}

func newPeerPool(creds credentials.TransportCredentials) *peerPool {
	return &peerPool{creds: creds, conns: map[string]*grpc.ClientConn{}}
}

// peerCreds are the credentials for calls to other nodes' APIs: with API
// TLS, this node's peer certificate and the peer name as server name, so
// the other node knows it is a node (tls.go, auth.go); plaintext otherwise.
func (n *Node) peerCreds() credentials.TransportCredentials {
	if n.sec.api != nil {
		return peerCreds{n.sec}
	}
	return insecure.NewCredentials()
}

func (p *peerPool) get(addr string) (*grpc.ClientConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.conns[addr]; ok {
		return c, nil
	}
	// Reconnect backoff is capped at 2 s (gRPC's default grows to 2 min):
	// a node that comes back, or a new member on a removed one's address,
	// is reachable again at once for forwarding and membership checks.
	c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(p.creds),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
			MinConnectTimeout: 5 * time.Second,
		}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20), grpc.MaxCallSendMsgSize(64<<20)))
	if err != nil {
		return nil, err
	}
	p.conns[addr] = c
	return c, nil
}

func (p *peerPool) close() {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = map[string]*grpc.ClientConn{}
}

// TransferLeadership hands leadership to another voter: to_node_id, or
// the reachable voter that has applied the most. An unreachable target is
// refused with FailedPrecondition. On a follower the call is forwarded to
// the leader.
func (s *service) TransferLeadership(ctx context.Context, req *pb.TransferLeadershipRequest) (*pb.TransferLeadershipResponse, error) {
	n := s.n
	if n.raft.State() != raft.Leader {
		if isForwarded(ctx) {
			return nil, toStatus(errNoLeader)
		}
		conn, err := n.leaderConn()
		if err != nil {
			return nil, toStatus(err)
		}
		ctx = metadata.AppendToOutgoingContext(ctx, forwardedKey, n.cfg.NodeID)
		return pb.NewClusterClient(conn).TransferLeadership(ctx, req)
	}
	if req.ToNodeId == n.cfg.NodeID {
		return &pb.TransferLeadershipResponse{NewLeaderId: n.cfg.NodeID}, nil
	}
	// The target is checked first (membership.go): a dead or cut-off
	// voter is refused at once instead of after raft's transfer timeout.
	id, err := n.transferLeadership(ctx, req.ToNodeId, false)
	if err != nil {
		return nil, err
	}
	return &pb.TransferLeadershipResponse{NewLeaderId: id}, nil
}

// waitForLeader waits until this node knows a leader, using Raft's
// leader observations rather than polling.
func (n *Node) waitForLeader(ctx context.Context) (string, error) {
	if _, id := n.raft.LeaderWithID(); id != "" {
		return string(id), nil
	}
	ch := make(chan raft.Observation, 4)
	obs := raft.NewObserver(ch, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.LeaderObservation)
		return ok
	})
	n.raft.RegisterObserver(obs)
	defer n.raft.DeregisterObserver(obs)
	for {
		if _, id := n.raft.LeaderWithID(); id != "" {
			return string(id), nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return "", ctx.Err()
		case <-n.shutdown:
			return "", raft.ErrRaftShutdown
		}
	}
}
