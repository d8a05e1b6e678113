package jepsen

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/tsstore/tsstore/internal/proccluster"
	pb "github.com/tsstore/tsstore/proto/tsstorev1"
)

// cluster is a three-node tsstore cluster of real processes whose Raft
// links all pass through the harness's proxies.
type cluster struct {
	pc    *proccluster.Cluster
	net   *Network
	nodes []*proccluster.Node
}

// startCluster lays out, starts and waits for a leader. prepare, if not
// nil, runs on the laid-out nodes before any starts (the disk-full
// scenario mounts their filesystems). On error nothing is left running.
func startCluster(ctx context.Context, binary, dir string, serveArgs, env []string,
	prepare func([]*proccluster.Node) error) (*cluster, error) {
	pc, err := proccluster.New(proccluster.Options{Binary: binary, Dir: dir, ExtraArgs: serveArgs, Env: env})
	if err != nil {
		return nil, err
	}
	if prepare != nil {
		if err := prepare(pc.Nodes); err != nil {
			return nil, err
		}
	}
	raft := map[string]string{}
	for _, n := range pc.Nodes {
		raft[n.ID] = n.RaftAddr
	}
	nw, err := newNetwork(raft)
	if err != nil {
		return nil, err
	}
	c := &cluster{pc: pc, net: nw, nodes: pc.Nodes}
	for _, n := range pc.Nodes {
		n.AddArgs("--raft-dial-override", nw.DialOverride(n.ID))
	}
	if err := pc.Start(); err != nil {
		c.close()
		return nil, err
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := pc.WaitLeader(wctx); err != nil {
		c.close()
		return nil, err
	}
	return c, nil
}

// close kills every node and stops the proxies.
func (c *cluster) close() {
	c.pc.Close()
	c.net.Close()
}

func (c *cluster) apiAddrs() []string { return c.pc.APIAddrs() }

// nodeStatus asks one node, bounded by a short timeout.
func nodeStatus(ctx context.Context, n *proccluster.Node) (*pb.StatusResponse, error) {
	if !n.Running() {
		return nil, fmt.Errorf("%s is not running", n.ID)
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	return n.Status(ctx)
}

// leader returns the node that claims leadership in the highest term, or
// nil if none does right now.
func (c *cluster) leader(ctx context.Context) *proccluster.Node {
	var best *proccluster.Node
	var term uint64
	for _, n := range c.nodes {
		st, err := nodeStatus(ctx, n)
		if err == nil && st.Role == "leader" && st.Term >= term {
			best, term = n, st.Term
		}
	}
	return best
}

// LeaderObservation is one leader seen by the status monitor.
type LeaderObservation struct {
	At     time.Duration `json:"at_ns"`
	Leader string        `json:"leader"`
	Term   uint64        `json:"term"`
}

// monitor polls every node's Status and records each new (term, leader).
type monitor struct {
	mu   sync.Mutex
	seen map[uint64]string
	obs  []LeaderObservation
}

func (m *monitor) run(ctx context.Context, c *cluster, rec *recorder) {
	m.seen = map[uint64]string{}
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		for _, n := range c.nodes {
			st, err := nodeStatus(ctx, n)
			if err != nil || st.Role != "leader" {
				continue
			}
			m.mu.Lock()
			if _, ok := m.seen[st.Term]; !ok {
				m.seen[st.Term] = st.NodeId
				m.obs = append(m.obs, LeaderObservation{rec.now(), st.NodeId, st.Term})
			}
			m.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (m *monitor) observations() []LeaderObservation {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]LeaderObservation(nil), m.obs...)
}
