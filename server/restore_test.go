package server

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tsstore/tsstore/fsm"
	pb "github.com/tsstore/tsstore/proto/tsstorev1"
	"github.com/tsstore/tsstore/segment"
)

// restoreCluster restores a backup into n new nodes on new ports and
// starts them without bootstrap peers.
func restoreCluster(t *testing.T, n int, info *pb.BackupInfo, data []byte) *testCluster {
	t.Helper()
	return restoreClusterWith(t, n, info, data, nil)
}

// restoreClusterWith is restoreCluster with each node's configuration
// tweaked before the restore.
func restoreClusterWith(t *testing.T, n int, info *pb.BackupInfo, data []byte, tweak func(*Config)) *testCluster {
	t.Helper()
	addrs := freeAddrs(t, 2*n)
	var peers []Peer
	for i := range n {
		peers = append(peers, Peer{ID: fmt.Sprintf("n%d", i+1), RaftAddr: addrs[2*i]})
	}
	tc := &testCluster{t: t}
	for i := range n {
		cfg := DefaultConfig()
		cfg.NodeID = peers[i].ID
		cfg.ClusterName = info.Cluster
		cfg.DataDir = filepath.Join(t.TempDir(), "data")
		cfg.RaftAddr = addrs[2*i]
		cfg.APIAddr = addrs[2*i+1]
		cfg.HeartbeatTimeout = 200 * time.Millisecond
		cfg.ElectionTimeout = 200 * time.Millisecond
		cfg.LeaderLeaseTimeout = 100 * time.Millisecond
		cfg.Segment.SegmentBytes = 1 << 20
		if tweak != nil {
			tweak(&cfg)
		}
		err := Restore(RestoreConfig{
			DataDir: cfg.DataDir, NodeID: cfg.NodeID, ClusterName: info.Cluster, Peers: peers,
			RaftIndex: info.RaftIndex, RaftTerm: info.RaftTerm, NextOffset: info.NextOffset,
			Stream: bytes.NewReader(data), SnapshotRetain: cfg.SnapshotRetain, Segment: cfg.Segment,
		})
		if err != nil {
			t.Fatalf("restoring %s: %v", cfg.NodeID, err)
		}
		tc.cfgs = append(tc.cfgs, cfg)
	}
	for _, cfg := range tc.cfgs {
		node, err := New(cfg)
		if err != nil {
			t.Fatalf("starting restored %s: %v", cfg.NodeID, err)
		}
		tc.nodes = append(tc.nodes, node)
	}
	t.Cleanup(tc.close)
	return tc
}

// TestRestoreSeedsANewCluster backs up a cluster, restores the backup into
// a new three-node cluster on new addresses and checks: same log up to
// the cut, a leader in a term above the backup's, new entries above the
// backup's raft index, new offsets from the backup's next offset on,
// producer state carried over, and all replicas identical.
func TestRestoreSeedsANewCluster(t *testing.T) {
	src := newTestCluster(t, 3, func(c *Config) { c.Segment.SegmentBytes = 16 << 10 })
	for seq := uint64(1); seq <= 40; seq++ {
		appendRetry(t, src, "p", seq, ev(fmt.Sprint("run/", seq%3), strings.Repeat("e", 500)))
	}
	f := src.follower()
	if err := f.proc.WaitNextOffset(ctxT(t), 40); err != nil {
		t.Fatal(err)
	}
	info, data := fetchBackup(t, f)
	if info.NextOffset != 40 {
		t.Fatalf("backup next offset %d, want 40", info.NextOffset)
	}
	want := logPrefix(t, src.leader(), info.NextOffset)
	src.close()

	dst := restoreCluster(t, 3, info, data)
	leader := dst.leader()
	if term := leader.raft.CurrentTerm(); term <= info.RaftTerm {
		t.Fatalf("new cluster's leader is in term %d, not above the backup's %d", term, info.RaftTerm)
	}
	for _, n := range dst.nodes {
		if got := logPrefix(t, n, info.NextOffset); !bytes.Equal(got, want) || n.proc.NextOffset() != info.NextOffset {
			t.Fatalf("%s: restored log (%d bytes, next %d) differs from the source's (%d bytes, next %d)",
				n.cfg.NodeID, len(got), n.proc.NextOffset(), len(want), info.NextOffset)
		}
	}
	resp := appendRetry(t, dst, "fresh", 1, ev("run/new", "a"), ev("run/new", "b"))
	if resp.FirstOffset != info.NextOffset || resp.LastOffset != info.NextOffset+1 || resp.RaftIndex <= info.RaftIndex {
		t.Fatalf("first append after restore: %v; want offsets from %d and raft index above %d", resp, info.NextOffset, info.RaftIndex)
	}
	// The old producer's state came with the backup: its next sequence
	// continues, a replay of an old one is answered as a duplicate.
	if r := appendRetry(t, dst, "p", 41, ev("run/1", "after")); r.FirstOffset != info.NextOffset+2 || r.Duplicate {
		t.Fatalf("old producer's next append: %v", r)
	}
	if r := appendRetry(t, dst, "p", 40, ev("run/1", strings.Repeat("e", 500))); !r.Duplicate || r.FirstOffset != 39 {
		t.Fatalf("old producer's replayed append: %v, want duplicate at offset 39", r)
	}
	end := info.NextOffset + 3
	all := logPrefix(t, leader, end)
	for _, n := range dst.nodes {
		if err := n.proc.WaitNextOffset(ctxT(t), end); err != nil {
			t.Fatal(err)
		}
		if got := logPrefix(t, n, end); !bytes.Equal(got, all) {
			t.Fatalf("%s diverged from the leader after the restore", n.cfg.NodeID)
		}
		if got := readAll(t, dial(t, n), &pb.ReadRequest{FromOffset: info.NextOffset, ToOffset: end, MinNextOffset: end}); got[info.NextOffset] != "a" || got[end-1] != "after" {
			t.Fatalf("%s serves %v after the cut", n.cfg.NodeID, got)
		}
	}
	// A restart does not restore the seeded snapshot again: the FSM is at
	// the snapshot's index.
	i := 0
	for dst.nodes[i] == leader {
		i++
	}
	dst.nodes[i].Close()
	dst.nodes[i] = nil
	n, err := New(dst.cfgs[i])
	if err != nil {
		t.Fatal(err)
	}
	dst.nodes[i] = n
	if err := n.proc.WaitNextOffset(ctxT(t), end); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(logPrefix(t, n, end), all) {
		t.Fatal("restarted node diverged")
	}
}

// TestRestoreRefusals checks every refusal leaves the target untouched
// and says what is wrong.
func TestRestoreRefusals(t *testing.T) {
	src := newTestCluster(t, 1, nil)
	for seq := uint64(1); seq <= 5; seq++ {
		appendRetry(t, src, "p", seq, ev("run/a", "x"))
	}
	info, data := fetchBackup(t, src.leader())
	peers := []Peer{{"n1", "127.0.0.1:7001"}, {"n2", "127.0.0.1:7002"}, {"n3", "127.0.0.1:7003"}}
	base := func(dir string) RestoreConfig {
		return RestoreConfig{DataDir: dir, NodeID: "n1", ClusterName: info.Cluster, Peers: peers,
			RaftIndex: info.RaftIndex, RaftTerm: info.RaftTerm, NextOffset: info.NextOffset,
			Stream: bytes.NewReader(data), SnapshotRetain: 2, Segment: segment.DefaultOptions()}
	}
	flipped := append([]byte(nil), data...)
	flipped[len(flipped)-10] ^= 0x40 // inside the last batch of the last segment
	cases := []struct {
		name    string
		prepare func(dir string)
		edit    func(*RestoreConfig)
		refused bool // ErrRestoreRefused (checked before anything is read)
		want    string
	}{
		{"non-empty dir", func(dir string) { os.MkdirAll(dir, 0o755); os.WriteFile(filepath.Join(dir, "notes.txt"), nil, 0o644) }, nil, true, "is not empty"},
		{"dir of another node", func(dir string) {
			os.MkdirAll(dir, 0o755)
			os.WriteFile(filepath.Join(dir, "node.json"), []byte(`{"cluster":"other","node_id":"x9"}`), 0o644)
		}, nil, true, `belongs to node "x9" of cluster "other"`},
		{"peer listed twice", nil, func(c *RestoreConfig) { c.Peers = append(c.Peers, Peer{"n2", "127.0.0.1:7004"}) }, true, `peer id "n2" is listed twice`},
		{"shared raft address", nil, func(c *RestoreConfig) { c.Peers[2].RaftAddr = "127.0.0.1:7001" }, true, "share the raft address"},
		{"bad raft address", nil, func(c *RestoreConfig) { c.Peers[1].RaftAddr = "nohost" }, true, `raft address "nohost"`},
		{"self not a peer", nil, func(c *RestoreConfig) { c.NodeID = "n7" }, true, `do not include this node "n7"`},
		{"no peers", nil, func(c *RestoreConfig) { c.Peers = nil }, true, "peers are required"},
		{"next offset disagrees", nil, func(c *RestoreConfig) { c.NextOffset++ }, false, "backup says"},
		{"truncated stream", nil, func(c *RestoreConfig) { c.Stream = bytes.NewReader(data[:len(data)-100]) }, false, "bad snapshot"},
		// The last segment is restored as the active one, whose torn tail
		// Open cuts; the cut shows as a log shorter than the header says.
		{"corrupt batch", nil, func(c *RestoreConfig) { c.Stream = bytes.NewReader(flipped) }, false, "segments end at offset 4, header says 5"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			parent := t.TempDir()
			dir := filepath.Join(parent, "data")
			if tc.prepare != nil {
				tc.prepare(dir)
			}
			before, _ := os.ReadDir(dir)
			cfg := base(dir)
			cfg.Peers = append([]Peer(nil), peers...)
			if tc.edit != nil {
				tc.edit(&cfg)
			}
			err := Restore(cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) || errors.Is(err, ErrRestoreRefused) != tc.refused {
				t.Fatalf("err %v; want one saying %q (refused up front: %v)", err, tc.want, tc.refused)
			}
			after, _ := os.ReadDir(dir)
			if len(after) != len(before) {
				t.Fatalf("target dir changed: %d entries before, %d after", len(before), len(after))
			}
			wantEnts := 0
			if tc.prepare != nil {
				wantEnts = 1 // the prepared data dir itself
			}
			if ents, _ := os.ReadDir(parent); len(ents) != wantEnts {
				t.Fatalf("left behind %v", ents)
			}
		})
	}
	// And the untouched case works, into a directory that exists but is empty.
	dir := filepath.Join(t.TempDir(), "data")
	os.MkdirAll(dir, 0o750)
	if err := Restore(base(dir)); err != nil {
		t.Fatal(err)
	}
	p, err := fsm.Open(fsm.DefaultConfig(filepath.Join(dir, "fsm")))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if p.AppliedIndex() != info.RaftIndex || p.NextOffset() != info.NextOffset || len(p.Nodes()) != 0 {
		t.Fatalf("restored applied %d next %d nodes %v", p.AppliedIndex(), p.NextOffset(), p.Nodes())
	}
	if err := Restore(base(dir)); !errors.Is(err, ErrRestoreRefused) {
		t.Fatalf("second restore into the same dir: %v, want refused", err)
	}
}
