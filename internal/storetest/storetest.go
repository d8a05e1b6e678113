// Package storetest starts an in-process tsstore cluster of real nodes
// (package server) on loopback for the tests of packages built on the
// client SDK, and returns a client of it.
package storetest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/tsstore/tsstore/client"
	"github.com/tsstore/tsstore/internal/freeport"
	"github.com/tsstore/tsstore/server"
)

// Cluster is a running in-process cluster.
type Cluster struct {
	Nodes  []*server.Node
	Addrs  []string // API addresses
	Client *client.Client
}

// Start starts n nodes with fast Raft timeouts, waits until the cluster
// serves an append and returns it; everything is closed when the test
// ends.
func Start(t testing.TB, n int) *Cluster {
	t.Helper()
	return StartWith(t, n, nil)
}

// StartWith is Start with tweak applied to every node's Config.
func StartWith(t testing.TB, n int, tweak func(*server.Config)) *Cluster {
	t.Helper()
	addrs := freeAddrs(t, 2*n)
	var peers []server.Peer
	for i := range n {
		peers = append(peers, server.Peer{ID: fmt.Sprintf("n%d", i+1), RaftAddr: addrs[2*i]})
	}
	dirs := make([]string, n)
	for i := range dirs {
		// before the Cleanup below, so that they are removed after the
		// nodes closed (cleanups run last first)
		dirs[i] = t.TempDir()
	}
	c := &Cluster{}
	t.Cleanup(func() {
		if c.Client != nil {
			c.Client.Close()
		}
		for _, nd := range c.Nodes {
			nd.Close()
		}
	})
	for i := range n {
		cfg := server.DefaultConfig()
		cfg.NodeID = peers[i].ID
		cfg.DataDir = dirs[i]
		cfg.RaftAddr = addrs[2*i]
		cfg.APIAddr = addrs[2*i+1]
		cfg.Bootstrap = peers
		cfg.HeartbeatTimeout = 200 * time.Millisecond
		cfg.ElectionTimeout = 200 * time.Millisecond
		cfg.LeaderLeaseTimeout = 100 * time.Millisecond
		cfg.MinFreeBytes = 0 // tests share a disk of any size
		if tweak != nil {
			tweak(&cfg)
		}
		nd, err := server.New(cfg)
		if err != nil {
			t.Fatalf("starting %s: %v", cfg.NodeID, err)
		}
		c.Nodes = append(c.Nodes, nd)
		c.Addrs = append(c.Addrs, cfg.APIAddr)
	}
	cl, err := client.New(client.DefaultConfig(c.Addrs...))
	if err != nil {
		t.Fatal(err)
	}
	c.Client = cl
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		st, err := cl.Status(ctx)
		if err == nil && st.GetLeaderId() != "" {
			return c
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no leader: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func freeAddrs(t testing.TB, n int) []string {
	t.Helper()
	out, err := freeport.Addrs("127.0.0.1", n)
	if err != nil {
		t.Fatal(err)
	}
	return out
}
