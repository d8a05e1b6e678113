package server

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/tsstore/tsstore/fsm"
	pb "github.com/tsstore/tsstore/proto/tsstorev1"
)

const (
	// DefaultPromoteMaxLag is how many entries a non-voter may be behind
	// the leader's commit index and still be promoted (PromoteMember with
	// max_lag 0).
	DefaultPromoteMaxLag = 1024
	// probeTimeout bounds one Status call to a member.
	probeTimeout = time.Second
	// removalApplyWait bounds how long RemoveMember waits for the removed
	// node to apply its own tombstone before taking it out of the Raft
	// configuration, after which it hears nothing more.
	removalApplyWait = 5 * time.Second
)

// probe is what one member says about itself.
type probe struct {
	applied       uint64 // raft's applied index: entries of every kind
	fsmApplied    uint64 // the last command entry the FSM applied
	diskProblem   string // why the member cannot persist, or ""
	lastContactMs int64  // -1: unknown
	incarnation   string
	err           error
	noAPI         bool // err: the member has not registered an API address
}

// heartbeats tracks, from raft's heartbeat observations, the peers the
// leader's heartbeats currently fail to, with the time the leader last
// heard from each. It is the Raft-level view of reachability, for members
// whose API cannot be asked.
type heartbeats struct {
	mu      sync.Mutex
	failing map[raft.ServerID]time.Time
}

func (n *Node) watchHeartbeats() {
	ch := make(chan raft.Observation, 256)
	obs := raft.NewObserver(ch, false, func(o *raft.Observation) bool {
		switch o.Data.(type) {
		case raft.FailedHeartbeatObservation, raft.ResumedHeartbeatObservation, raft.LeaderObservation, raft.PeerObservation:
			return true
		}
		return false
	})
	n.raft.RegisterObserver(obs)
	defer n.raft.DeregisterObserver(obs)
	for {
		select {
		case o := <-ch:
			n.hb.mu.Lock()
			switch d := o.Data.(type) {
			case raft.FailedHeartbeatObservation:
				if n.hb.failing == nil {
					n.hb.failing = map[raft.ServerID]time.Time{}
				}
				n.hb.failing[d.PeerID] = d.LastContact
			case raft.ResumedHeartbeatObservation:
				delete(n.hb.failing, d.PeerID)
			case raft.LeaderObservation:
				clear(n.hb.failing) // a new term starts new heartbeats
			case raft.PeerObservation:
				// Replication to the peer started or stopped. A peer
				// removed while its heartbeats failed never gets a
				// Resumed observation (the failure count belongs to the
				// stopped goroutine), so without this a re-added id would
				// stay "unreachable" for the rest of the term.
				delete(n.hb.failing, d.Peer.ID)
			}
			n.hb.mu.Unlock()
		case <-n.shutdown:
			return
		}
	}
}

// heartbeatFailing reports whether this leader's heartbeats to id fail.
func (n *Node) heartbeatFailing(id raft.ServerID) (time.Time, bool) {
	n.hb.mu.Lock()
	defer n.hb.mu.Unlock()
	last, ok := n.hb.failing[id]
	return last, ok
}

// unreachable says why a probed member cannot be counted on, or "" if it
// can: its API answered (or it has none registered) and the leader's
// heartbeats reach it.
func (n *Node) unreachable(id raft.ServerID, p probe) string {
	if p.err != nil && !p.noAPI {
		return p.err.Error()
	}
	if last, ok := n.heartbeatFailing(id); ok {
		since := "never"
		if !last.IsZero() {
			since = time.Since(last).Round(time.Millisecond).String() + " ago"
		}
		return fmt.Sprintf("node %s does not answer raft heartbeats (last contact %s)", id, since)
	}
	return ""
}

func (n *Node) lastContactMs() int64 {
	if n.raft.State() == raft.Leader {
		return 0
	}
	last := n.raft.LastContact()
	if last.IsZero() {
		return -1
	}
	return time.Since(last).Milliseconds()
}

// probeMember asks one member for its Status, within probeTimeout.
func (n *Node) probeMember(ctx context.Context, id, apiAddr string) probe {
	if id == n.cfg.NodeID {
		return probe{applied: n.raft.AppliedIndex(), fsmApplied: n.proc.AppliedIndex(), lastContactMs: n.lastContactMs(), incarnation: n.incarnation}
	}
	p := probe{lastContactMs: -1}
	if apiAddr == "" {
		p.err = fmt.Errorf("node %s has not registered its API address (is it running?)", id)
		p.noAPI = true
		return p
	}
	conn, err := n.peers.get(apiAddr)
	if err != nil {
		p.err = err
		return p
	}
	// The pooled channel may be waiting out its reconnect backoff after
	// the node at this address was down: try again now, and wait for the
	// connection (up to the timeout) instead of failing with the old error.
	if conn.GetState() == connectivity.TransientFailure {
		conn.ResetConnectBackoff()
	}
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	st, err := pb.NewEventStoreClient(conn).Status(ctx, &pb.StatusRequest{}, grpc.WaitForReady(true))
	switch {
	case err != nil:
		p.err = fmt.Errorf("node %s at %s is unreachable: %s", id, apiAddr, status.Convert(err).Message())
		return p
	case st.NodeId != id:
		p.err = fmt.Errorf("%s answers as node %s, not %s", apiAddr, st.NodeId, id)
		return p
	}
	p.applied, p.fsmApplied = st.RaftAppliedIndex, st.AppliedIndex
	p.diskProblem = st.DiskProblem
	p.lastContactMs = st.LastContactMs
	p.incarnation = st.Incarnation
	return p
}

// probeAll asks every listed server concurrently.
func (n *Node) probeAll(ctx context.Context, servers []raft.Server) map[raft.ServerID]probe {
	nodes := n.proc.Nodes()
	out := make(map[raft.ServerID]probe, len(servers))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, srv := range servers {
		wg.Go(func() {
			p := n.probeMember(ctx, string(srv.ID), nodes[string(srv.ID)])
			mu.Lock()
			out[srv.ID] = p
			mu.Unlock()
		})
	}
	wg.Wait()
	return out
}

// configuration returns the latest Raft configuration and its index.
func (n *Node) configuration() ([]raft.Server, uint64, error) {
	f := n.raft.GetConfiguration()
	if err := n.await(nil, f); err != nil { // raft may never answer once it shuts down
		return nil, 0, err
	}
	return f.Configuration().Servers, f.Index(), nil
}

// member returns the configuration entry of id.
func (n *Node) member(id string) (raft.Server, bool) {
	servers, _, err := n.configuration()
	if err != nil {
		return raft.Server{}, false
	}
	for _, srv := range servers {
		if string(srv.ID) == id {
			return srv, true
		}
	}
	return raft.Server{}, false
}

// toLeader returns a Cluster client for the leader when this node is not
// the leader (nil when it is), marking the call as forwarded; a forwarded
// call that reaches a non-leader fails instead of looping.
func (n *Node) toLeader(ctx context.Context) (pb.ClusterClient, context.Context, error) {
	if n.raft.State() == raft.Leader {
		return nil, ctx, nil
	}
	if isForwarded(ctx) {
		return nil, ctx, toStatus(fmt.Errorf("%w: forwarded call reached non-leader %s", errNoLeader, n.cfg.NodeID))
	}
	conn, err := n.leaderConn()
	if err != nil {
		return nil, ctx, toStatus(err)
	}
	return pb.NewClusterClient(conn), metadata.AppendToOutgoingContext(ctx, forwardedKey, n.cfg.NodeID), nil
}

// Members lists the Raft configuration with each member's progress.
// Members that cannot be asked are listed with error set.
func (s *service) Members(ctx context.Context, req *pb.MembersRequest) (*pb.MembersResponse, error) {
	n := s.n
	if c, fctx, err := n.toLeader(ctx); err != nil || c != nil {
		if err != nil {
			return nil, err
		}
		return c.Members(fctx, req)
	}
	servers, _, err := n.configuration()
	if err != nil {
		return nil, toStatus(err)
	}
	commit := n.raft.CommitIndex()
	probes := n.probeAll(ctx, servers)
	nodes := n.proc.Nodes()
	resp := &pb.MembersResponse{LeaderId: n.cfg.NodeID, CommitIndex: commit}
	for _, srv := range servers {
		p := probes[srv.ID]
		m := &pb.Member{
			Id: string(srv.ID), RaftAddress: string(srv.Address), ApiAddress: nodes[string(srv.ID)],
			Suffrage: suffrageName(srv.Suffrage), Leader: string(srv.ID) == n.cfg.NodeID,
			LastContactMs: p.lastContactMs, AppliedIndex: p.applied,
		}
		if p.err != nil {
			m.Error = p.err.Error()
			m.LastContactMs = -1
		} else if commit > p.applied {
			m.Lag = commit - p.applied
		}
		resp.Members = append(resp.Members, m)
	}
	return resp, nil
}

func validMemberAddress(a string) error {
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return err
	}
	if p, err := strconv.Atoi(port); err != nil || p <= 0 || p > 65535 {
		return fmt.Errorf("port %q is not in 1-65535", port)
	}
	if host == "" {
		return fmt.Errorf("host is empty")
	}
	return nil
}

// AddMember adds a node to the Raft configuration, as a non-voter unless
// asked for a voter.
func (s *service) AddMember(ctx context.Context, req *pb.AddMemberRequest) (*pb.AddMemberResponse, error) {
	n := s.n
	if !idPattern.MatchString(req.NodeId) {
		return nil, status.Errorf(codes.InvalidArgument, "node id %q: want 1-64 of [A-Za-z0-9._-]", req.NodeId)
	}
	if err := validMemberAddress(req.RaftAddress); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "raft address %q: %v", req.RaftAddress, err)
	}
	if c, fctx, err := n.toLeader(ctx); err != nil || c != nil {
		if err != nil {
			return nil, err
		}
		return c.AddMember(fctx, req)
	}
	servers, cfgIndex, err := n.configuration()
	if err != nil {
		return nil, toStatus(err)
	}
	for _, srv := range servers {
		if string(srv.ID) == req.NodeId {
			return nil, status.Errorf(codes.AlreadyExists, "node %s is already a member (%s at %s)", req.NodeId, suffrageName(srv.Suffrage), srv.Address)
		}
		if string(srv.Address) == req.RaftAddress {
			return nil, status.Errorf(codes.AlreadyExists, "raft address %s is already used by member %s", req.RaftAddress, srv.ID)
		}
	}
	var f raft.IndexFuture
	if req.Voter {
		f = n.raft.AddVoter(raft.ServerID(req.NodeId), raft.ServerAddress(req.RaftAddress), cfgIndex, 0)
	} else {
		f = n.raft.AddNonvoter(raft.ServerID(req.NodeId), raft.ServerAddress(req.RaftAddress), cfgIndex, 0)
	}
	if err := n.await(ctx, f); err != nil {
		return nil, configChangeStatus(err)
	}
	n.logger.Info("member added", "id", req.NodeId, "raft", req.RaftAddress, "voter", req.Voter, "index", f.Index())
	return &pb.AddMemberResponse{Index: f.Index()}, nil
}

// configChangeStatus maps the error of a configuration change. raft
// refuses a change based on a stale configuration with a plain error.
func configChangeStatus(err error) error {
	if st := toStatus(err); status.Code(st) != codes.Internal {
		return st
	}
	return status.Errorf(codes.Aborted, "configuration change refused, retry: %v", err)
}

// PromoteMember makes a caught-up, reachable non-voter a voter.
func (s *service) PromoteMember(ctx context.Context, req *pb.PromoteMemberRequest) (*pb.PromoteMemberResponse, error) {
	n := s.n
	if c, fctx, err := n.toLeader(ctx); err != nil || c != nil {
		if err != nil {
			return nil, err
		}
		return c.PromoteMember(fctx, req)
	}
	servers, cfgIndex, err := n.configuration()
	if err != nil {
		return nil, toStatus(err)
	}
	var srv *raft.Server
	for i := range servers {
		if string(servers[i].ID) == req.NodeId {
			srv = &servers[i]
		}
	}
	if srv == nil {
		return nil, status.Errorf(codes.NotFound, "node %q is not a member of this cluster", req.NodeId)
	}
	if srv.Suffrage == raft.Voter {
		return nil, status.Errorf(codes.FailedPrecondition, "node %s is already a voter", req.NodeId)
	}
	if err := n.checkCaughtUp(ctx, req.NodeId, cmp(req.MaxLag, DefaultPromoteMaxLag)); err != nil {
		return nil, err
	}
	f := n.raft.AddVoter(srv.ID, srv.Address, cfgIndex, 0)
	if err := n.await(ctx, f); err != nil {
		return nil, configChangeStatus(err)
	}
	n.logger.Info("member promoted", "id", req.NodeId, "index", f.Index())
	return &pb.PromoteMemberResponse{Index: f.Index()}, nil
}

func cmp(v, def uint64) uint64 {
	if v == 0 {
		return def
	}
	return v
}

// checkCaughtUp refuses (FailedPrecondition) a member that is not a live,
// registered, not removed incarnation within maxLag of the commit index.
func (n *Node) checkCaughtUp(ctx context.Context, id string, maxLag uint64) error {
	inc := n.proc.Incarnation(id)
	if t, ok := n.proc.Removed(id, inc); ok {
		return removedStatus(t)
	}
	addr := n.proc.Nodes()[id]
	if addr == "" {
		return status.Errorf(codes.FailedPrecondition, "node %s has not registered with the cluster yet (is it running?)", id)
	}
	p := n.probeMember(ctx, id, addr)
	if p.err != nil {
		return status.Errorf(codes.FailedPrecondition, "%v", p.err)
	}
	if t, ok := n.proc.Removed(id, p.incarnation); ok {
		return removedStatus(t)
	}
	if inc != "" && p.incarnation != inc {
		return status.Errorf(codes.FailedPrecondition, "node %s answers with incarnation %s but registered %s; wait for it to register", id, p.incarnation, inc)
	}
	commit := n.raft.CommitIndex()
	if commit > p.applied && commit-p.applied > maxLag {
		return status.Errorf(codes.FailedPrecondition, "node %s is %d entries behind the leader's commit index %d (applied %d); max lag is %d",
			id, commit-p.applied, commit, p.applied, maxLag)
	}
	return nil
}

// RemoveMember removes a node from the cluster for good: it commits the
// tombstone of the node's incarnation, lets the node apply it (it then
// stops and marks its data directory), and takes it out of the Raft
// configuration. The leader removing itself hands leadership over first.
func (s *service) RemoveMember(ctx context.Context, req *pb.RemoveMemberRequest) (*pb.RemoveMemberResponse, error) {
	n := s.n
	if c, fctx, err := n.toLeader(ctx); err != nil || c != nil {
		if err != nil {
			return nil, err
		}
		return c.RemoveMember(fctx, req)
	}
	servers, cfgIndex, err := n.configuration()
	if err != nil {
		return nil, toStatus(err)
	}
	target, ok := raft.Server{}, false
	var others []raft.Server // voters that stay
	for _, srv := range servers {
		switch {
		case string(srv.ID) == req.NodeId:
			target, ok = srv, true
		case srv.Suffrage == raft.Voter:
			others = append(others, srv)
		}
	}
	if !ok {
		return nil, status.Errorf(codes.NotFound, "node %q is not a member of this cluster", req.NodeId)
	}
	if target.Suffrage == raft.Voter {
		if len(others) == 0 {
			return nil, status.Errorf(codes.FailedPrecondition, "node %s is the last voter; add and promote another node before removing it", req.NodeId)
		}
		probes := n.probeAll(ctx, others)
		reachable := 0
		for id, p := range probes {
			if n.unreachable(id, p) == "" {
				reachable++
			}
		}
		if quorum := len(others)/2 + 1; reachable < quorum {
			return nil, status.Errorf(codes.FailedPrecondition, "removing %s would leave %d voters of which only %d are reachable; a quorum needs %d",
				req.NodeId, len(others), reachable, quorum)
		}
	}
	if req.NodeId == n.cfg.NodeID {
		return n.removeSelf(ctx, req)
	}
	nodes := n.proc.Nodes()
	inc := n.proc.Incarnation(req.NodeId)
	if inc == "" {
		// Registered before incarnations existed: ask it.
		inc = n.probeMember(ctx, req.NodeId, nodes[req.NodeId]).incarnation
	}
	if _, done := n.proc.Removed(req.NodeId, inc); !done || inc == "" {
		index, err := n.applyCommand(ctx, fsm.CmdRemoveNode, &fsm.RemoveNodeCommand{ID: req.NodeId, Incarnation: inc})
		if err != nil {
			return nil, toStatus(err)
		}
		n.logger.Info("member tombstoned", "id", req.NodeId, "incarnation", inc, "index", index)
		n.waitRemovalApplied(ctx, req.NodeId, nodes[req.NodeId], index)
	}
	f := n.raft.RemoveServer(target.ID, cfgIndex, 0)
	if err := n.await(ctx, f); err != nil {
		return nil, configChangeStatus(err)
	}
	n.logger.Info("member removed", "id", req.NodeId, "index", f.Index())
	return &pb.RemoveMemberResponse{Index: f.Index()}, nil
}

// waitRemovalApplied waits, up to removalApplyWait, until the removed node
// has applied its tombstone or stopped answering: once it is out of the
// configuration the leader sends it nothing, not even the commit index.
func (n *Node) waitRemovalApplied(ctx context.Context, id, addr string, index uint64) {
	ctx, cancel := context.WithTimeout(ctx, removalApplyWait)
	defer cancel()
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		p := n.probeMember(ctx, id, addr)
		if p.err != nil || p.fsmApplied >= index {
			return
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			n.logger.Warn("removed node did not apply its tombstone in time; it must not be restarted with its data", "id", id)
			return
		}
	}
}

// removeSelf is RemoveMember of the leader: hand leadership to a
// reachable voter, then let the new leader remove this node. The new
// leader may take a moment to be known here; the call is retried on it
// until ctx ends.
func (n *Node) removeSelf(ctx context.Context, req *pb.RemoveMemberRequest) (*pb.RemoveMemberResponse, error) {
	if _, err := n.transferLeadership(ctx, "", true); err != nil {
		return nil, err
	}
	for {
		resp, err := n.removeSelfOnLeader(ctx, req)
		if status.Code(err) != codes.Unavailable || ctx.Err() != nil {
			return resp, err
		}
		select {
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
			return nil, err
		case <-n.shutdown:
			return nil, err
		}
	}
}

func (n *Node) removeSelfOnLeader(ctx context.Context, req *pb.RemoveMemberRequest) (*pb.RemoveMemberResponse, error) {
	if _, err := n.waitForLeader(ctx); err != nil {
		return nil, toStatus(err)
	}
	if n.raft.State() == raft.Leader {
		return nil, status.Errorf(codes.FailedPrecondition, "node %s is leader again after handing leadership over; retry", n.cfg.NodeID)
	}
	// Not toLeader: the call may have been forwarded here already, and
	// this one more hop, to the leader this node just made, is the point.
	conn, err := n.leaderConn()
	if err != nil {
		return nil, toStatus(err)
	}
	fctx := metadata.AppendToOutgoingContext(ctx, forwardedKey, n.cfg.NodeID)
	return pb.NewClusterClient(conn).RemoveMember(fctx, req)
}

// transferTarget picks and checks the voter to hand leadership to: to, or
// the reachable voter that has applied the most. It refuses (quickly, with
// FailedPrecondition) a target that is unreachable or not in contact with
// this leader, on which raft would spend its whole transfer timeout.
// With needAPI, only voters with a registered API address qualify.
func (n *Node) transferTarget(ctx context.Context, to string, needAPI bool) (raft.Server, error) {
	servers, _, err := n.configuration()
	if err != nil {
		return raft.Server{}, toStatus(err)
	}
	var cands []raft.Server
	for _, srv := range servers {
		if srv.Suffrage == raft.Voter && string(srv.ID) != n.cfg.NodeID && (to == "" || string(srv.ID) == to) {
			cands = append(cands, srv)
		}
	}
	if len(cands) == 0 {
		if to != "" {
			return raft.Server{}, status.Errorf(codes.NotFound, "node %q is not a voter of this cluster", to)
		}
		return raft.Server{}, status.Errorf(codes.FailedPrecondition, "no other voter to hand leadership to")
	}
	probes := n.probeAll(ctx, cands)
	maxContact := max(2*time.Second, 4*n.cfg.HeartbeatTimeout).Milliseconds()
	var best raft.Server
	var bestApplied uint64
	var why []string
	for _, srv := range cands {
		p := probes[srv.ID]
		switch {
		case n.unreachable(srv.ID, p) != "":
			why = append(why, n.unreachable(srv.ID, p))
		case p.noAPI && needAPI:
			why = append(why, p.err.Error())
		case p.noAPI:
			// Not registered yet but answering heartbeats: raft's own
			// catch-up check applies.
			if best.ID == "" {
				best = srv
			}
		case p.lastContactMs < 0 || p.lastContactMs > maxContact:
			why = append(why, fmt.Sprintf("node %s last heard from the leader %d ms ago", srv.ID, p.lastContactMs))
		case best.ID == "" || p.applied > bestApplied:
			best, bestApplied = srv, p.applied
		}
	}
	if best.ID == "" {
		return raft.Server{}, status.Errorf(codes.FailedPrecondition, "not transferring leadership: %v", why)
	}
	return best, nil
}

// transferLeadership hands leadership to a checked voter and returns the
// new leader's id.
func (n *Node) transferLeadership(ctx context.Context, to string, needAPI bool) (string, error) {
	target, err := n.transferTarget(ctx, to, needAPI)
	if err != nil {
		return "", err
	}
	f := n.raft.LeadershipTransferToServer(target.ID, target.Address)
	if err := n.await(ctx, f); err != nil {
		return "", status.Errorf(codes.Unavailable, "leadership transfer to %s: %v", target.ID, err)
	}
	id, err := n.waitForLeader(ctx)
	if err != nil {
		return "", toStatus(err)
	}
	return id, nil
}
