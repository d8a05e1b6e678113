package server

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/tsstore/tsstore/proto/tsstorev1"
)

// A linearizable read must not wait for an append when the newest
// committed entries never reach the FSM (the leader's barrier, a
// configuration change).
func TestLinearizableReadWithoutAppends(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	c := dial(t, tc.follower())
	var events int
	// An election on a loaded machine (Unavailable, "not the leader") is
	// retried; a read that waits for an append would reach the deadline.
	err := retryUnavailable(ctx, func() error {
		stream, err := c.Read(ctx, &pb.ReadRequest{Consistency: pb.Consistency_CONSISTENCY_LINEARIZABLE})
		if err != nil {
			return err
		}
		for {
			resp, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				return err
			}
			events += len(resp.Batches)
		}
	})
	if err != nil || events != 0 || ctx.Err() != nil {
		t.Fatalf("read %d bytes of batches after %v: %v", events, time.Since(start), err)
	}
	t.Logf("read in %v", time.Since(start))
}

// After a leader change the newest committed entries are the new leader's
// no-op and barrier: a linearizable read must still return at once.
func TestLinearizableReadAfterLeaderChange(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	if _, err := dial(t, tc.leader()).Append(ctxT(t), &pb.AppendRequest{Events: []*pb.Event{ev("s", "v")}}); err != nil {
		t.Fatal(err)
	}
	old := tc.leader()
	for i, n := range tc.nodes {
		if n == old {
			n.Close()
			tc.nodes[i] = nil
		}
	}
	l := tc.leader()
	for _, n := range tc.nodes {
		if n != nil && n != l {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			start := time.Now()
			stream, err := dial(t, n).Read(ctx, &pb.ReadRequest{Consistency: pb.Consistency_CONSISTENCY_LINEARIZABLE})
			if err == nil {
				_, err = stream.Recv()
			}
			cancel()
			if err != nil {
				t.Fatalf("linearizable read on %s after a leader change: %v after %v", n.cfg.NodeID, err, time.Since(start))
			}
		}
	}
}

// Right after a membership change, with no append since, a snapshot can
// be taken on every node and a linearizable read returns: the
// configuration entry counts as applied.
func TestSnapshotRightAfterMembershipChange(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	l := tc.leader()
	if _, err := dial(t, l).Append(ctxT(t), &pb.AppendRequest{Events: []*pb.Event{ev("s", "v")}}); err != nil {
		t.Fatal(err)
	}
	// A non-voter that never answers: its configuration entry commits
	// without it.
	f := l.raft.AddNonvoter("ghost", "127.0.0.1:1", 0, 5*time.Second)
	if err := f.Error(); err != nil {
		t.Fatal(err)
	}
	confIndex := f.Index()
	for _, n := range tc.nodes {
		if err := n.proc.WaitApplied(ctxT(t), confIndex); err != nil {
			t.Fatalf("%s never counted the configuration entry %d as applied: %v", n.cfg.NodeID, confIndex, err)
		}
		resp, err := dialCluster(t, n).Snapshot(ctxT(t), &pb.SnapshotRequest{})
		if err != nil || resp.Index < confIndex {
			t.Fatalf("snapshot on %s right after the membership change: %v, index %d, want >= %d", n.cfg.NodeID, err, resp.GetIndex(), confIndex)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		stream, err := dial(t, n).Read(ctx, &pb.ReadRequest{Consistency: pb.Consistency_CONSISTENCY_LINEARIZABLE})
		if err == nil {
			_, err = stream.Recv()
		}
		cancel()
		if err != nil {
			t.Fatalf("linearizable read on %s after the membership change: %v", n.cfg.NodeID, err)
		}
	}
}

// A node whose FSM has stopped hands a linearizable read over at once with
// Unavailable, so the SDK reads from another node instead of returning a
// short log (one that is only behind gets behindWait to catch up).
func TestNotServingNodeHandsReadOver(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	if _, err := dial(t, tc.leader()).Append(ctxT(t), &pb.AppendRequest{Events: []*pb.Event{ev("s", "v")}}); err != nil {
		t.Fatal(err)
	}
	f := tc.follower()
	f.setFatal(errors.New("test: the FSM stopped"))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		if serving, _ := f.Health(); !serving {
			break
		}
		select {
		case <-f.HealthChanged():
		case <-ctx.Done():
			t.Fatal("the stuck follower never went NOT_SERVING")
		}
	}
	start := time.Now()
	stream, err := dial(t, f).Read(ctx, &pb.ReadRequest{Consistency: pb.Consistency_CONSISTENCY_LINEARIZABLE})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.Unavailable || time.Since(start) > 2*time.Second {
		t.Fatalf("linearizable read on a NOT_SERVING node: %v after %v, want Unavailable at once", err, time.Since(start))
	}
}
