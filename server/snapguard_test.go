package server

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/tsstore/tsstore/proto/tsstorev1"
)

// A follower that cannot persist is not sent snapshots: the leader skips
// InstallSnapshot while the follower reports a full disk (counted), so
// nothing is streamed in a loop, and once the follower has space again it
// gets the snapshot and catches up, with no restart.
func TestSnapshotSendsToAFullNodeBackOff(t *testing.T) {
	const plenty, none = 100 << 30, 1 << 20
	free := map[string]*atomic.Int64{}
	for i := range 3 {
		free[fmt.Sprintf("n%d", i+1)] = new(atomic.Int64)
		free[fmt.Sprintf("n%d", i+1)].Store(plenty)
	}
	tc := newTestCluster(t, 3, func(c *Config) {
		id := c.NodeID
		c.MinFreeBytes, c.DiskResumeBytes = 1<<30, 1<<20
		c.freeSpace = func(string) (int64, error) { return free[id].Load(), nil }
		c.TrailingLogs = 8
	})
	l := tc.leader()
	fi := 0
	for i, n := range tc.nodes {
		if n != l {
			fi = i
			break
		}
	}
	f := restartNode(t, tc, fi, func() {
		for i := range 200 {
			// Two nodes of three: a loaded machine can lose the leader
			// meanwhile; the append goes to the next one.
			for try := 0; ; try++ {
				_, err := dial(t, tc.leader()).Append(ctxT(t), &pb.AppendRequest{Events: []*pb.Event{ev("s", fmt.Sprint(i))}})
				if err == nil {
					break
				}
				if status.Code(err) != codes.Unavailable || try > 50 {
					t.Fatal(err)
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
		snapshotLive(t, tc)
		free[tc.cfgs[fi].NodeID].Store(none) // it comes back on a full disk
	})
	l = tc.leader()
	if f.diskProblem() == "" {
		t.Fatal("the restarted follower does not report its full disk")
	}
	deadline := time.Now().Add(20 * time.Second)
	for counterValue(t, l.metrics.snapshotSendsDeferred) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the leader never deferred a snapshot send to the full follower")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if f.proc.AppliedIndex() >= l.proc.AppliedIndex() {
		t.Fatalf("the full follower applied %d of %d without a snapshot", f.proc.AppliedIndex(), l.proc.AppliedIndex())
	}
	free[tc.cfgs[fi].NodeID].Store(plenty)
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	if err := f.proc.WaitApplied(ctx, l.proc.AppliedIndex()); err != nil {
		t.Fatalf("the follower did not catch up once it had space: applied %d of %d: %v", f.proc.AppliedIndex(), l.proc.AppliedIndex(), err)
	}
}
