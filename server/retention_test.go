package server

import (
	"context"
	"fmt"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	pb "github.com/tsstore/tsstore/proto/tsstorev1"
)

func dialRetention(t *testing.T, n *Node) pb.RetentionClient {
	t.Helper()
	conn, err := grpc.NewClient(n.APIAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewRetentionClient(conn)
}

// waitAllApplied waits until every running node has applied what the
// leader has.
func waitAllApplied(t *testing.T, tc *testCluster) {
	t.Helper()
	idx := tc.leader().proc.AppliedIndex()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, n := range tc.nodes {
		if n != nil {
			if err := n.proc.WaitApplied(ctx, idx); err != nil {
				t.Fatalf("%s did not apply up to %d: %v", n.cfg.NodeID, idx, err)
			}
		}
	}
}

// checkCompacted checks that a read below first on n is OFFSET_COMPACTED
// naming first, and that a read from first works.
func checkCompacted(t *testing.T, n *Node, first uint64) {
	t.Helper()
	err := readRange(t, n, 0, first)
	st := status.Convert(err)
	var info *errdetails.ErrorInfo
	for _, d := range st.Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok {
			info = ei
		}
	}
	if st.Code() != codes.OutOfRange || info == nil || info.Reason != pb.ErrorReason_ERROR_REASON_OFFSET_COMPACTED.String() ||
		info.Metadata["first_offset"] != fmt.Sprint(first) {
		t.Fatalf("%s: read below %d = %v (details %v)", n.cfg.NodeID, first, err, info)
	}
	if err := readRange(t, n, first, first+10); err != nil {
		t.Fatalf("%s: read from %d: %v", n.cfg.NodeID, first, err)
	}
}

// digests returns n's sealed segments' digests as read now, checking
// each against the manifest.
func digests(t *testing.T, n *Node) string {
	t.Helper()
	resp, err := dialRetention(t, n).SegmentDigests(ctxT(t), &pb.SegmentDigestsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	out := fmt.Sprint("first ", resp.FirstOffset)
	for _, s := range resp.Segments {
		if s.Error != "" || s.Digest != s.ManifestDigest {
			t.Fatalf("%s: segment %d: digest %08x, manifest %08x, %q", n.cfg.NodeID, s.BaseOffset, s.Digest, s.ManifestDigest, s.Error)
		}
		out += fmt.Sprintf(" %d-%d:%08x", s.BaseOffset, s.NextOffset, s.Digest)
	}
	return out
}

// Retention end to end on a 3-node cluster: a policy set through a
// follower, a dry run that changes nothing, a cut every replica applies
// (same files dropped, same digests, OFFSET_COMPACTED below it), kept
// across a restart and carried to a follower by InstallSnapshot.
func TestRetentionCutOnEveryReplica(t *testing.T) {
	tc := newTestCluster(t, 3, func(c *Config) {
		c.Segment.SegmentBytes = 64 << 10
		c.TrailingLogs = 8
		c.RetentionInterval = 0 // cuts only on demand: the test decides when
	})
	next := appendBatches(t, tc, "p1", 60)
	waitNextOffset(t, tc.nodes, next)
	f := tc.follower()
	rc := dialRetention(t, f)
	ctx := ctxT(t)
	// max-bytes 1: every sealed segment with a later sealed one may go.
	set, err := rc.SetRetention(ctx, &pb.SetRetentionRequest{Policy: &pb.RetentionPolicy{Prefix: "run/", MaxBytes: 1}})
	if err != nil || set.PolicyVersion != 1 {
		t.Fatalf("SetRetention through a follower: %v, %v", set, err)
	}
	if _, err := rc.SetRetention(ctx, &pb.SetRetentionRequest{Policy: &pb.RetentionPolicy{Prefix: "x/"}}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("a policy without limits = %v", err)
	}
	dry, err := rc.Compact(ctx, &pb.CompactRequest{DryRun: true})
	if err != nil || dry.Cut == 0 || dry.Committed || len(dry.Segments) == 0 {
		t.Fatalf("dry run: %v, %v", dry, err)
	}
	waitAllApplied(t, tc)
	for _, n := range tc.nodes {
		if n.proc.FirstOffset() != 0 {
			t.Fatalf("%s: a dry run moved the first offset to %d", n.cfg.NodeID, n.proc.FirstOffset())
		}
	}
	cut, err := rc.Compact(ctx, &pb.CompactRequest{})
	if err != nil || !cut.Committed || cut.Cut != dry.Cut {
		t.Fatalf("compact: %v, %v (dry run said %d)", cut, err, dry.Cut)
	}
	waitAllApplied(t, tc)
	want := digests(t, tc.leader())
	for _, n := range tc.nodes {
		if n.proc.FirstOffset() != cut.Cut {
			t.Fatalf("%s: first offset %d, want %d", n.cfg.NodeID, n.proc.FirstOffset(), cut.Cut)
		}
		checkCompacted(t, n, cut.Cut)
		if got := digests(t, n); got != want {
			t.Fatalf("digests differ:\n%s: %s\nleader: %s", n.cfg.NodeID, got, want)
		}
		list, err := dialRetention(t, n).ListRetention(ctx, &pb.ListRetentionRequest{})
		if err != nil || list.FirstOffset != cut.Cut || len(list.Policies) != 1 || list.Segments[0].State != "dropped" {
			t.Fatalf("%s: ListRetention %v, %v", n.cfg.NodeID, list, err)
		}
	}

	// A follower that misses a second cut while down catches up by
	// InstallSnapshot (TrailingLogs is 8) and lands on the same log.
	fi := 0
	for i, n := range tc.nodes {
		if n == f {
			fi = i
		}
	}
	var cut2 *pb.CompactResponse
	f = restartNode(t, tc, fi, func() {
		next = appendBatches(t, tc, "p2", 60)
		l := tc.leader()
		var err error
		if cut2, err = dialRetention(t, l).Compact(ctx, &pb.CompactRequest{}); err != nil || !cut2.Committed || cut2.Cut <= cut.Cut {
			t.Fatalf("second compact: %v, %v", cut2, err)
		}
		snapshotLive(t, tc)
		appendBatches(t, tc, "p3", 20)
	})
	waitAllApplied(t, tc)
	if idx := f.raft.Stats()["last_snapshot_index"]; idx == "0" {
		t.Fatal("the follower caught up without a snapshot: the test needs InstallSnapshot")
	}
	want = digests(t, tc.leader())
	for _, n := range tc.nodes {
		if n.proc.FirstOffset() != cut2.Cut {
			t.Fatalf("%s: first offset %d after the second cut, want %d", n.cfg.NodeID, n.proc.FirstOffset(), cut2.Cut)
		}
		checkCompacted(t, n, cut2.Cut)
		if got := digests(t, n); got != want {
			t.Fatalf("digests differ after InstallSnapshot:\n%s: %s\nleader: %s", n.cfg.NodeID, got, want)
		}
	}
	// And a plain restart keeps it.
	f = restartNode(t, tc, fi, nil)
	waitAllApplied(t, tc)
	if f.proc.FirstOffset() != cut2.Cut {
		t.Fatalf("first offset after restart %d, want %d", f.proc.FirstOffset(), cut2.Cut)
	}
	checkCompacted(t, f, cut2.Cut)
}

// The leader's retention tick commits a cut by itself once a policy lets
// sealed segments go; no call needed.
func TestRetentionTick(t *testing.T) {
	tc := newTestCluster(t, 3, func(c *Config) {
		c.Segment.SegmentBytes = 64 << 10
		c.RetentionInterval = 50 * time.Millisecond
	})
	next := appendBatches(t, tc, "p1", 40)
	waitNextOffset(t, tc.nodes, next)
	if _, err := dialRetention(t, tc.follower()).SetRetention(ctxT(t), &pb.SetRetentionRequest{Policy: &pb.RetentionPolicy{Prefix: "run/", MaxBytes: 1}}); err != nil {
		t.Fatal(err)
	}
	// Every sealed segment but the last may go: wait for the cut on every
	// node (on the FSM's changes, not on time).
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, n := range tc.nodes {
		for {
			ch := n.proc.Changed()
			r := n.proc.Retention()
			if k := len(r.Segments); k > 1 && r.FirstOffset == r.Segments[k-1].BaseOffset {
				break
			}
			select {
			case <-ch:
			case <-ctx.Done():
				t.Fatalf("%s: no cut: %+v", n.cfg.NodeID, n.proc.Retention())
			}
		}
	}
	checkCompacted(t, tc.nodes[0], tc.nodes[0].proc.FirstOffset())
	// Leadership may have moved since: count every node's cuts. A cut is
	// counted once its commit returns, which may be just after the nodes
	// applied it.
	waitFor(t, "tsstore_retention_cuts_total and _reclaimed_bytes_total to count the cut", func() bool {
		var cuts, bytes float64
		for _, n := range tc.nodes {
			cuts += counterValue(t, n.metrics.retentionCuts)
			bytes += counterValue(t, n.metrics.retentionBytes)
		}
		return cuts >= 1 && bytes > 0
	})
}
