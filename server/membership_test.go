package server

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/tsstore/tsstore/proto/tsstorev1"
)

// extraNode starts a node that is not bootstrapped: it waits to be added.
// dir "" gives it a fresh data directory.
func (tc *testCluster) extraNode(id, dir string) (*Node, Config) {
	tc.t.Helper()
	addrs := freeAddrs(tc.t, 2)
	cfg := tc.cfgs[0]
	cfg.NodeID, cfg.RaftAddr, cfg.APIAddr, cfg.Bootstrap = id, addrs[0], addrs[1], nil
	cfg.DataDir = dir
	if dir == "" {
		cfg.DataDir = tc.t.TempDir()
	}
	n, err := New(cfg)
	if err != nil {
		tc.t.Fatalf("starting %s: %v", id, err)
	}
	tc.t.Cleanup(func() { n.Close() })
	return n, cfg
}

// waitFor polls cond (a condition on other nodes' state, which has no
// channel to wait on) until it holds or 20 s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func wantMemberCode(t *testing.T, what string, err error, code codes.Code, msg string) {
	t.Helper()
	if status.Code(err) != code || !strings.Contains(status.Convert(err).Message(), msg) {
		t.Fatalf("%s: got %v, want %v containing %q", what, err, code, msg)
	}
}

// registered waits until the leader's node table holds every running
// node with its incarnation.
func (tc *testCluster) registered() *Node {
	tc.t.Helper()
	l := tc.leader()
	waitFor(tc.t, "every node to register", func() bool {
		for _, n := range tc.nodes {
			if n != nil && l.proc.Incarnation(n.cfg.NodeID) != n.incarnation {
				return false
			}
		}
		return true
	})
	return l
}

// appendN appends n events through c, retrying an append that failed
// because leadership moved (the test machine may be slow).
func appendN(t *testing.T, c pb.EventStoreClient, n int) {
	t.Helper()
	for i := range n {
		req := &pb.AppendRequest{ProducerId: "membership-test", ProducerSeq: uint64(i + 1), Events: []*pb.Event{ev("s", fmt.Sprint(i))}}
		for try := 0; ; try++ {
			_, err := c.Append(ctxT(t), req)
			if err == nil {
				break
			}
			if status.Code(err) != codes.Unavailable || try > 50 {
				t.Fatal(err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

func membersByID(t *testing.T, c pb.ClusterClient) (map[string]*pb.Member, *pb.MembersResponse) {
	t.Helper()
	resp, err := c.Members(ctxT(t), &pb.MembersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*pb.Member{}
	for _, m := range resp.Members {
		out[m.Id] = m
	}
	return out, resp
}

// TestMembershipSingleNodeRefusals: a one-node cluster refuses to lose
// its last voter and rejects malformed or unknown members.
func TestMembershipSingleNodeRefusals(t *testing.T) {
	tc := newTestCluster(t, 1, nil)
	n := tc.leader()
	c := dialCluster(t, n)
	ms, resp := membersByID(t, c)
	if m := ms["n1"]; len(ms) != 1 || m == nil || !m.Leader || m.Suffrage != "voter" || m.Error != "" || m.Lag != 0 ||
		m.LastContactMs != 0 || m.ApiAddress != n.APIAddr() || resp.LeaderId != "n1" || m.AppliedIndex == 0 {
		t.Fatalf("members %v", resp)
	}
	_, err := c.RemoveMember(ctxT(t), &pb.RemoveMemberRequest{NodeId: "n1"})
	wantMemberCode(t, "remove the last voter", err, codes.FailedPrecondition, "last voter")
	_, err = c.RemoveMember(ctxT(t), &pb.RemoveMemberRequest{NodeId: "n7"})
	wantMemberCode(t, "remove unknown", err, codes.NotFound, "not a member")
	_, err = c.AddMember(ctxT(t), &pb.AddMemberRequest{NodeId: "bad id!", RaftAddress: "127.0.0.1:1"})
	wantMemberCode(t, "add bad id", err, codes.InvalidArgument, "node id")
	_, err = c.AddMember(ctxT(t), &pb.AddMemberRequest{NodeId: "n2", RaftAddress: "nohostport"})
	wantMemberCode(t, "add bad address", err, codes.InvalidArgument, "raft address")
	_, err = c.AddMember(ctxT(t), &pb.AddMemberRequest{NodeId: "n1", RaftAddress: "127.0.0.1:1"})
	wantMemberCode(t, "add self again", err, codes.AlreadyExists, "already a member")
	_, err = c.AddMember(ctxT(t), &pb.AddMemberRequest{NodeId: "n2", RaftAddress: tc.cfgs[0].RaftAddr})
	wantMemberCode(t, "add with a used address", err, codes.AlreadyExists, "already used by member n1")
	_, err = c.PromoteMember(ctxT(t), &pb.PromoteMemberRequest{NodeId: "n1"})
	wantMemberCode(t, "promote a voter", err, codes.FailedPrecondition, "already a voter")
	_, err = c.PromoteMember(ctxT(t), &pb.PromoteMemberRequest{NodeId: "n7"})
	wantMemberCode(t, "promote unknown", err, codes.NotFound, "not a member")
	_, err = c.TransferLeadership(ctxT(t), &pb.TransferLeadershipRequest{})
	wantMemberCode(t, "transfer without another voter", err, codes.FailedPrecondition, "no other voter")
	if n.raft.State() != raft.Leader {
		t.Fatal("refusals changed leadership")
	}
}

// TestMembershipAddPromoteRemoveRejoin: a new node joins as a non-voter
// through a follower, catches up, is promoted; a removed follower stops,
// marks its data directory and refuses to start on it; with a wiped data
// directory the same id joins again.
func TestMembershipAddPromoteRemoveRejoin(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	leader := tc.registered()
	follower := tc.follower()
	fc := dialCluster(t, follower) // every call is forwarded to the leader
	appendN(t, dial(t, leader), 20)

	n4, cfg4 := tc.extraNode("n4", "")
	if _, err := fc.AddMember(ctxT(t), &pb.AddMemberRequest{NodeId: "n4", RaftAddress: cfg4.RaftAddr}); err != nil {
		t.Fatal(err)
	}
	_, err := fc.AddMember(ctxT(t), &pb.AddMemberRequest{NodeId: "n4", RaftAddress: cfg4.RaftAddr})
	wantMemberCode(t, "add twice", err, codes.AlreadyExists, "already a member")
	waitFor(t, "n4 to register its incarnation", func() bool { return leader.proc.Incarnation("n4") == n4.Incarnation() })
	ms, resp := membersByID(t, fc)
	if m := ms["n4"]; m == nil || m.Suffrage != "nonvoter" || m.Error != "" || m.ApiAddress != n4.APIAddr() || m.LastContactMs < 0 {
		t.Fatalf("members after add: %v", resp)
	}
	if n4.proc.NextOffset() != 20 && n4.proc.WaitNextOffset(ctxT(t), 20) != nil {
		t.Fatal("n4 did not catch up")
	}
	if _, err := fc.PromoteMember(ctxT(t), &pb.PromoteMemberRequest{NodeId: "n4"}); err != nil {
		t.Fatal(err)
	}
	if ms, resp := membersByID(t, fc); ms["n4"] == nil || ms["n4"].Suffrage != "voter" {
		t.Fatalf("members after promote: %v", resp)
	}

	// Remove the follower (not the one the calls go through).
	var victim *Node
	var victimCfg Config
	for i, n := range tc.nodes {
		if n != leader && n != follower {
			victim, victimCfg = n, tc.cfgs[i]
			tc.nodes[i] = nil
		}
	}
	defer victim.Close()
	victimInc := victim.Incarnation()
	if _, err := fc.RemoveMember(ctxT(t), &pb.RemoveMemberRequest{NodeId: victimCfg.NodeID}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-victim.Fatal():
		if !errors.Is(err, ErrNodeRemoved) || !strings.Contains(err.Error(), "wipe") {
			t.Fatalf("removed node stopped with %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("removed node did not stop")
	}
	victim.Close()
	if ms, resp := membersByID(t, fc); ms[victimCfg.NodeID] != nil {
		t.Fatalf("removed node still a member: %v", resp)
	}
	waitFor(t, "the removed node to leave the node table", func() bool {
		_, ok := follower.proc.Nodes()[victimCfg.NodeID]
		return !ok
	})
	if _, err := os.Stat(filepath.Join(victimCfg.DataDir, removedFile)); err != nil {
		t.Fatalf("no removed marker: %v", err)
	}
	if _, err := New(victimCfg); !errors.Is(err, ErrNodeRemoved) || !strings.Contains(err.Error(), "wipe") {
		t.Fatalf("restart of a removed node: %v", err)
	}
	// Even without the marker, its registration is refused by the leader
	// and it stops: the tombstone is in the replicated node table.
	os.Remove(filepath.Join(victimCfg.DataDir, removedFile))
	err = leader.applyRegister(ctxT(t), victimCfg.NodeID, victimCfg.APIAddr, victimInc)
	wantMemberCode(t, "register a removed incarnation", err, codes.FailedPrecondition, "was removed")
	_, err = fc.RemoveMember(ctxT(t), &pb.RemoveMemberRequest{NodeId: victimCfg.NodeID})
	wantMemberCode(t, "remove twice", err, codes.NotFound, "not a member")

	// Wiped, the same id joins again with a new incarnation.
	if err := os.RemoveAll(victimCfg.DataDir); err != nil {
		t.Fatal(err)
	}
	again, cfgAgain := tc.extraNode(victimCfg.NodeID, victimCfg.DataDir)
	if again.Incarnation() == victimInc {
		t.Fatal("wiped data directory kept its incarnation")
	}
	// The leader's heartbeats to the old incarnation may have failed before
	// it was removed; replication to the re-added id is new and must not
	// inherit that (it would count as unreachable for the rest of the term).
	leader.hb.mu.Lock()
	if leader.hb.failing == nil {
		leader.hb.failing = map[raft.ServerID]time.Time{}
	}
	leader.hb.failing[raft.ServerID(cfgAgain.NodeID)] = time.Now().Add(-time.Minute)
	leader.hb.mu.Unlock()
	if _, err := fc.AddMember(ctxT(t), &pb.AddMemberRequest{NodeId: cfgAgain.NodeID, RaftAddress: cfgAgain.RaftAddr}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the new incarnation to register", func() bool { return leader.proc.Incarnation(cfgAgain.NodeID) == again.Incarnation() })
	if again.proc.WaitNextOffset(ctxT(t), 20) != nil {
		t.Fatal("re-added node did not catch up")
	}
	select {
	case err := <-again.Fatal():
		t.Fatalf("re-added node stopped: %v (it applied the old incarnation's tombstone)", err)
	default:
	}
	waitFor(t, "the leader to stop counting the re-added node unreachable", func() bool {
		_, failing := leader.heartbeatFailing(raft.ServerID(cfgAgain.NodeID))
		return !failing
	})
	if _, err := fc.PromoteMember(ctxT(t), &pb.PromoteMemberRequest{NodeId: cfgAgain.NodeID}); err != nil {
		t.Fatal(err)
	}
}

// TestMembershipRemoveLeader: removing the leader hands leadership over
// first; the old leader then applies its tombstone and stops.
func TestMembershipRemoveLeader(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	leader := tc.registered()
	// Through a follower: the leader gets a forwarded call and forwards it
	// once more, to the leader it hands over to.
	c := dialCluster(t, tc.follower())
	var id string
	for i, n := range tc.nodes {
		if n == leader {
			id = tc.cfgs[i].NodeID
			tc.nodes[i] = nil
		}
	}
	defer leader.Close()
	if _, err := c.RemoveMember(ctxT(t), &pb.RemoveMemberRequest{NodeId: id}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-leader.Fatal():
		if !errors.Is(err, ErrNodeRemoved) {
			t.Fatalf("old leader stopped with %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("removed leader did not stop")
	}
	leader.Close()
	next := tc.leader()
	if _, ok := next.member(id); ok {
		t.Fatal("old leader still in the configuration")
	}
	if _, err := dial(t, next).Append(ctxT(t), &pb.AppendRequest{Events: []*pb.Event{ev("s", "after")}}); err != nil {
		t.Fatalf("append after removing the leader: %v", err)
	}
}

// TestMembershipRefusesDeadOrLaggingTargets: leadership is not handed to a
// stopped voter, and a non-voter is not promoted while it is unreachable,
// unregistered or too far behind.
func TestMembershipRefusesDeadOrLaggingTargets(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	leader := tc.registered()
	c := dialCluster(t, leader)
	var dead string
	for i, n := range tc.nodes {
		if n != leader && dead == "" {
			dead = tc.cfgs[i].NodeID
			n.Close()
			tc.nodes[i] = nil
		}
	}
	start := time.Now()
	_, err := c.TransferLeadership(ctxT(t), &pb.TransferLeadershipRequest{ToNodeId: dead})
	wantMemberCode(t, "transfer to a dead node", err, codes.FailedPrecondition, "unreachable")
	// One probe (1 s) and no raft transfer: well under a busy machine's
	// worst case, which is all a time bound can say here.
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("refusing took %v", d)
	}
	ms, _ := membersByID(t, c)
	if m := ms[dead]; m == nil || m.Error == "" || m.LastContactMs >= 0 {
		t.Fatalf("dead member listed as %v", m)
	}

	// A member added but never started has not registered.
	_, err = c.AddMember(ctxT(t), &pb.AddMemberRequest{NodeId: "ghost", RaftAddress: freeAddrs(t, 1)[0]})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.PromoteMember(ctxT(t), &pb.PromoteMemberRequest{NodeId: "ghost"})
	wantMemberCode(t, "promote an unregistered node", err, codes.FailedPrecondition, "has not registered")
	// Removing a non-voter needs no quorum check and leaves the voters.
	if _, err := c.RemoveMember(ctxT(t), &pb.RemoveMemberRequest{NodeId: "ghost"}); err != nil {
		t.Fatal(err)
	}

	// A registered non-voter cut off from Raft falls behind.
	n4, cfg4 := tc.extraNode("n4", "")
	if _, err := c.AddMember(ctxT(t), &pb.AddMemberRequest{NodeId: "n4", RaftAddress: cfg4.RaftAddr}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "n4 to register", func() bool { return leader.proc.Incarnation("n4") == n4.Incarnation() })
	n4.trans.Close()
	appendN(t, dial(t, leader), 20)
	_, err = c.PromoteMember(ctxT(t), &pb.PromoteMemberRequest{NodeId: "n4", MaxLag: 5})
	wantMemberCode(t, "promote a lagging node", err, codes.FailedPrecondition, "entries behind")
	// Removing a voter when the remaining voters have no reachable quorum
	// is refused: n1..n3 minus the dead one minus the leader leaves one.
	_, err = c.RemoveMember(ctxT(t), &pb.RemoveMemberRequest{NodeId: tc.follower().cfg.NodeID})
	wantMemberCode(t, "remove without a reachable quorum left", err, codes.FailedPrecondition, "reachable")
}

// TestMembershipOldNodeJSONGetsIncarnation: a data directory from before
// incarnations starts, gets one, keeps it across restarts, and registers it.
func TestMembershipOldNodeJSONGetsIncarnation(t *testing.T) {
	tc := newTestCluster(t, 1, nil)
	cfg := tc.cfgs[0]
	tc.nodes[0].Close()
	tc.nodes[0] = nil
	path := filepath.Join(cfg.DataDir, identityFile)
	if err := os.WriteFile(path, []byte(`{"cluster":"tsstore","node_id":"n1"}`), 0o640); err != nil {
		t.Fatal(err)
	}
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	inc := n.Incarnation()
	b, _ := os.ReadFile(path)
	if len(inc) != 16 || !strings.Contains(string(b), `"incarnation":"`+inc+`"`) {
		t.Fatalf("incarnation %q, node.json %s", inc, b)
	}
	waitFor(t, "the incarnation to be registered", func() bool { return n.proc.Incarnation("n1") == inc })
	n.Close()
	n, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if n.Incarnation() != inc {
		t.Fatalf("incarnation changed across a restart: %q, was %q", n.Incarnation(), inc)
	}
}
