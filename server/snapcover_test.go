package server

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	pb "github.com/tsstore/tsstore/proto/tsstorev1"
	"github.com/tsstore/tsstore/segment"
)

func restartNode(t *testing.T, tc *testCluster, i int, between func()) *Node {
	t.Helper()
	tc.nodes[i].Close()
	tc.nodes[i] = nil
	if between != nil {
		between()
	}
	n, err := New(tc.cfgs[i])
	if err != nil {
		t.Fatal(err)
	}
	tc.nodes[i] = n
	return n
}

// snapshotLive snapshots (and so compacts the Raft log of) every running
// node, for tests that need a node that is down to catch up by
// InstallSnapshot: a leader change while it is down must not hand it a
// leader that still holds the entries it missed.
func snapshotLive(t *testing.T, tc *testCluster) {
	t.Helper()
	for _, n := range liveNodes(tc) {
		if _, err := dialCluster(t, n).Snapshot(ctxT(t), &pb.SnapshotRequest{}); err != nil {
			t.Fatal(err)
		}
	}
}

// liveNodes returns the running nodes of tc.
func liveNodes(tc *testCluster) []*Node {
	var out []*Node
	for _, n := range tc.nodes {
		if n != nil {
			out = append(out, n)
		}
	}
	return out
}

// TestRestartKeepsLogWhenSnapshotIsAheadOnlyByNoops: a snapshot taken
// right after an election has a Raft index above the FSM's (the new
// leader's no-op never reaches the FSM). A restart must not take that for
// a lagging FSM and rewrite the whole log from the snapshot.
func TestRestartKeepsLogWhenSnapshotIsAheadOnlyByNoops(t *testing.T) {
	tc := newTestCluster(t, 1, nil)
	for seq := uint64(1); seq <= 3; seq++ {
		appendRetry(t, tc, "p", seq, ev("run/a", "x"))
	}
	n := restartNode(t, tc, 0, nil)
	tc.leader()
	snap, err := dialCluster(t, n).Snapshot(ctxT(t), &pb.SnapshotRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if snap.Index <= n.proc.AppliedIndex() {
		t.Fatalf("snapshot at %d, FSM at %d: the test needs a snapshot ahead by no-ops", snap.Index, n.proc.AppliedIndex())
	}
	seg := filepath.Join(tc.cfgs[0].DataDir, "fsm", "log", segment.FileName(0))
	before, err := os.Stat(seg)
	if err != nil {
		t.Fatal(err)
	}
	restartNode(t, tc, 0, nil)
	after, err := os.Stat(seg)
	if err != nil || !os.SameFile(before, after) {
		t.Fatalf("the restart replaced %s (restored the snapshot): %v", seg, err)
	}
}

// TestRestartRestoresSnapshotWhenFSMIsBehind: an FSM directory older than
// the newest snapshot is restored from it at start.
func TestRestartRestoresSnapshotWhenFSMIsBehind(t *testing.T) {
	tc := newTestCluster(t, 1, nil)
	for seq := uint64(1); seq <= 3; seq++ {
		appendRetry(t, tc, "p", seq, ev("run/a", "x"))
	}
	fsmDir := filepath.Join(tc.cfgs[0].DataDir, "fsm")
	old := filepath.Join(t.TempDir(), "fsm-old")
	restartNode(t, tc, 0, func() {
		if out, err := exec.Command("cp", "-a", fsmDir, old).CombinedOutput(); err != nil {
			t.Fatalf("cp: %v %s", err, out)
		}
	})
	for seq := uint64(4); seq <= 6; seq++ {
		appendRetry(t, tc, "p", seq, ev("run/a", "y"))
	}
	if _, err := dialCluster(t, tc.leader()).Snapshot(ctxT(t), &pb.SnapshotRequest{}); err != nil {
		t.Fatal(err)
	}
	n := restartNode(t, tc, 0, func() {
		os.RemoveAll(fsmDir)
		if err := os.Rename(old, fsmDir); err != nil {
			t.Fatal(err)
		}
	})
	if n.proc.NextOffset() != 6 {
		t.Fatalf("after a start on an FSM older than the snapshot: next offset %d, want 6", n.proc.NextOffset())
	}
}
