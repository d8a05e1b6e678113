package systemtest

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tsstore/tsstore/client"
)

// TestLaggingFollowerCatchesUpViaInstallSnapshot stops a follower, appends
// far past the trailing-logs limit so the leader snapshots and truncates its
// Raft log, then restarts the follower: it can only catch up through
// InstallSnapshot, and must end with the identical log.
func TestLaggingFollowerCatchesUpViaInstallSnapshot(t *testing.T) {
	c := startCluster(t, "--snapshot-threshold", "64", "--trailing-logs", "16", "--snapshot-interval", "200ms",
		"--segment-bytes", "262144")
	leader := waitLeader(t, c)
	var follower = c.Nodes[0]
	if follower == leader {
		follower = c.Nodes[1]
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cl := newClient(t, c.APIAddrs())
	p := cl.NewProducer("catch-up")
	appendN := func(n int) uint64 {
		var last uint64
		for i := range n {
			res, err := p.Append(ctx, client.Event{Stream: "run/snap", Type: "BatchCompleted", Payload: fmt.Appendf(nil, "%d-%s", i, strings.Repeat("x", 200))})
			if err != nil {
				t.Fatal(err)
			}
			last = res.LastOffset
		}
		return last
	}
	appendN(50)
	if err := follower.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	last := appendN(2000)
	// Make sure the leader has snapshotted past the follower's position.
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err := leader.Status(ctx)
		if err == nil && st.LastSnapshotIndex > 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("leader did not snapshot: %v %v", st, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := follower.Start(); err != nil {
		t.Fatal(err)
	}
	waitCaughtUp(t, c, last+1)
	if !strings.Contains(follower.Logs(), "fsm restored from snapshot") {
		t.Fatal("follower caught up without InstallSnapshot; the test did not exercise it")
	}
	want := readRaw(t, leader.APIAddr, last+1)
	got := readRaw(t, follower.APIAddr, last+1)
	if got.hash != want.hash || len(got.records) != int(last+1) {
		t.Fatalf("follower log %s (%d records) differs from leader's %s (%d records)", got.hash, len(got.records), want.hash, len(want.records))
	}
	// The restored follower keeps working: more appends, still identical.
	last = appendN(20)
	waitCaughtUp(t, c, last+1)
	if readRaw(t, follower.APIAddr, last+1).hash != readRaw(t, leader.APIAddr, last+1).hash {
		t.Fatal("follower diverged after the snapshot install")
	}
}
