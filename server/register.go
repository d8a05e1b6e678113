package server

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/tsstore/tsstore/fsm"
	pb "github.com/tsstore/tsstore/proto/tsstorev1"
)

// removedStatus is the FailedPrecondition answer to a removed incarnation.
func removedStatus(t fsm.Tombstone) error {
	return withReason(codes.FailedPrecondition, pb.ErrorReason_ERROR_REASON_NODE_REMOVED,
		fmt.Sprintf("node %s incarnation %s was removed from the cluster at raft index %d; wipe its data directory to add it again",
			t.NodeID, t.Incarnation, t.RaftIndex),
		map[string]string{"node_id": t.NodeID, "incarnation": t.Incarnation, "raft_index": strconv.FormatUint(t.RaftIndex, 10)})
}

// removedFrom returns the tombstone a removedStatus error carries.
func removedFrom(err error) (fsm.Tombstone, bool) {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.FailedPrecondition {
		return fsm.Tombstone{}, false
	}
	for _, d := range st.Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok && ei.GetDomain() == ErrorDomain && ei.GetReason() == pb.ErrorReason_ERROR_REASON_NODE_REMOVED.String() {
			idx, _ := strconv.ParseUint(ei.Metadata["raft_index"], 10, 64)
			return fsm.Tombstone{NodeID: ei.Metadata["node_id"], Incarnation: ei.Metadata["incarnation"], RaftIndex: idx}, true
		}
	}
	return fsm.Tombstone{}, false
}

// RegisterNode records a node's API address and incarnation through Raft.
// The leader refuses a removed incarnation and a node outside the Raft
// configuration.
func (s *service) RegisterNode(ctx context.Context, req *pb.RegisterNodeRequest) (*pb.RegisterNodeResponse, error) {
	if req.NodeId == "" || req.ApiAddress == "" {
		return nil, invalidArg("node id and api address are required")
	}
	if s.n.raft.State() != raft.Leader {
		if isForwarded(ctx) {
			return nil, toStatus(errNoLeader)
		}
		conn, err := s.n.leaderConn()
		if err != nil {
			return nil, toStatus(err)
		}
		ctx = metadata.AppendToOutgoingContext(ctx, forwardedKey, s.n.cfg.NodeID)
		return pb.NewClusterClient(conn).RegisterNode(ctx, req)
	}
	if err := s.n.applyRegister(ctx, req.NodeId, req.ApiAddress, req.Incarnation); err != nil {
		return nil, toStatus(err)
	}
	return &pb.RegisterNodeResponse{}, nil
}

// applyRegister is the leader's side of RegisterNode. A registration that
// changes nothing is answered without a Raft entry.
func (n *Node) applyRegister(ctx context.Context, id, addr, inc string) error {
	if t, ok := n.proc.Removed(id, inc); ok {
		return removedStatus(t)
	}
	if _, ok := n.member(id); !ok {
		return status.Errorf(codes.FailedPrecondition, "node %s is not a member of the cluster; add it with `tsstore members add %s <raft-addr>`", id, id)
	}
	if n.proc.Nodes()[id] == addr && (inc == "" || n.proc.Incarnation(id) == inc) {
		return nil
	}
	_, err := n.applyCommand(ctx, fsm.CmdRegisterNode, &fsm.RegisterNodeCommand{ID: id, APIAddress: addr, Incarnation: inc})
	if errors.Is(err, fsm.ErrNodeRemoved) {
		if t, ok := n.proc.Removed(id, inc); ok {
			return removedStatus(t)
		}
	}
	return err
}

// registerSelf makes sure the node table holds this node's API address
// and incarnation, retrying until it does, and again whenever it changes.
// It registers once per start even when the table already matches: that
// is how a node removed while it was down learns of it. Such a node never
// hears from the leader again (it is no longer in the configuration), so
// while no leader is known it asks its peers, which forward to theirs.
func (n *Node) registerSelf() {
	// Quick tries until the first registration went through, so that
	// peers can reach this node soon after it starts; then a slow check.
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	addr := n.cfg.apiAdvertise()
	confirmed := false
	for try := 0; ; try++ {
		if !confirmed || n.proc.Nodes()[n.cfg.NodeID] != addr || n.proc.Incarnation(n.cfg.NodeID) != n.incarnation {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err := n.registerOnce(ctx, addr, try)
			cancel()
			if ts, ok := removedFrom(err); ok {
				n.removed(ts, "the leader refused its registration")
				return
			}
			if err != nil {
				n.logger.Debug("registering api address", "error", err)
			}
			if err == nil && !confirmed {
				t.Reset(500 * time.Millisecond)
			}
			confirmed = err == nil
		}
		select {
		case <-t.C:
		case <-n.shutdown:
			return
		}
	}
}

func (n *Node) registerOnce(ctx context.Context, addr string, try int) error {
	if n.raft.State() == raft.Leader {
		return n.applyRegister(ctx, n.cfg.NodeID, addr, n.incarnation)
	}
	conn, err := n.leaderConn()
	if errors.Is(err, errNoLeader) {
		var peers []string
		for id, a := range n.proc.Nodes() {
			if id != n.cfg.NodeID && a != "" {
				peers = append(peers, a)
			}
		}
		if len(peers) == 0 {
			return err
		}
		// Map order is random, which spreads the tries over the peers.
		conn, err = n.peers.get(peers[try%len(peers)])
	}
	if err != nil {
		return err
	}
	_, err = pb.NewClusterClient(conn).RegisterNode(ctx, &pb.RegisterNodeRequest{NodeId: n.cfg.NodeID, ApiAddress: addr, Incarnation: n.incarnation})
	return err
}
