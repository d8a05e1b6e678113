package server

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/tsstore/tsstore/proto/tsstorev1"
)

// testCluster is an in-process cluster of real Nodes on loopback ports.
type testCluster struct {
	t     *testing.T
	cfgs  []Config
	nodes []*Node
}

func freeAddrs(t *testing.T, n int) []string {
	t.Helper()
	var ls []net.Listener
	var out []string
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		out = append(out, l.Addr().String())
	}
	for _, l := range ls {
		l.Close()
	}
	return out
}

// newTestCluster starts n nodes with fast Raft timeouts and waits for a
// leader and for every node to know every node's API address: a test that
// then stops a node must not stop one whose table still lacks a peer that
// becomes leader while it is down (it could not forward to it, and with
// snapshots refused it would never learn of it).
func newTestCluster(t *testing.T, n int, tweak func(*Config)) *testCluster {
	t.Helper()
	addrs := freeAddrs(t, 2*n)
	tc := &testCluster{t: t}
	var peers []Peer
	for i := range n {
		peers = append(peers, Peer{ID: fmt.Sprintf("n%d", i+1), RaftAddr: addrs[2*i]})
	}
	for i := range n {
		cfg := DefaultConfig()
		cfg.NodeID = peers[i].ID
		cfg.DataDir = t.TempDir()
		cfg.RaftAddr = addrs[2*i]
		cfg.APIAddr = addrs[2*i+1]
		cfg.Bootstrap = peers
		cfg.HeartbeatTimeout = 200 * time.Millisecond
		cfg.ElectionTimeout = 200 * time.Millisecond
		cfg.LeaderLeaseTimeout = 100 * time.Millisecond
		cfg.Segment.SegmentBytes = 1 << 20
		cfg.MinFreeBytes = 0 // tests share a disk of any size
		if tweak != nil {
			tweak(&cfg)
		}
		tc.cfgs = append(tc.cfgs, cfg)
	}
	for i := range n {
		node, err := New(tc.cfgs[i])
		if err != nil {
			t.Fatalf("starting %s: %v", tc.cfgs[i].NodeID, err)
		}
		tc.nodes = append(tc.nodes, node)
	}
	t.Cleanup(tc.close)
	tc.leader()
	tc.waitRegistered()
	return tc
}

// waitRegistered waits until every running node's table holds the API
// address of every running node.
func (tc *testCluster) waitRegistered() {
	tc.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		missing := ""
		for _, m := range tc.nodes {
			for _, n := range tc.nodes {
				if m != nil && n != nil && m.proc.Nodes()[n.cfg.NodeID] == "" {
					missing = fmt.Sprintf("%s does not know %s's API address", m.cfg.NodeID, n.cfg.NodeID)
				}
			}
		}
		if missing == "" {
			return
		}
		if time.Now().After(deadline) {
			tc.t.Fatal(missing)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (tc *testCluster) close() {
	for i, n := range tc.nodes {
		if n != nil {
			n.Close()
			tc.nodes[i] = nil
		}
	}
}

// leader waits for a leader whose barrier has applied and whose API
// address every node knows.
func (tc *testCluster) leader() *Node {
	tc.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		for _, n := range tc.nodes {
			if n == nil || n.raft.State() != raft.Leader || n.leaderReady.Load() != n.raft.CurrentTerm() {
				continue
			}
			all := true
			for _, m := range tc.nodes {
				if m != nil && m.proc.Nodes()[n.cfg.NodeID] == "" {
					all = false
				}
			}
			if all {
				return n
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	tc.t.Fatal("no ready leader")
	return nil
}

func (tc *testCluster) follower() *Node {
	l := tc.leader()
	for _, n := range tc.nodes {
		if n != nil && n != l {
			return n
		}
	}
	tc.t.Fatal("no follower")
	return nil
}

// followerIndex returns the index in tc.nodes of a follower.
func (tc *testCluster) followerIndex() int {
	f := tc.follower()
	for i, n := range tc.nodes {
		if n == f {
			return i
		}
	}
	return -1
}

func dial(t *testing.T, n *Node) pb.EventStoreClient {
	t.Helper()
	conn, err := grpc.NewClient(n.APIAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20), grpc.MaxCallSendMsgSize(64<<20)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewEventStoreClient(conn)
}

func dialCluster(t *testing.T, n *Node) pb.ClusterClient {
	t.Helper()
	conn, err := grpc.NewClient(n.APIAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewClusterClient(conn)
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}
