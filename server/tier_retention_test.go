package server

import (
	"errors"
	"testing"
	"time"

	"github.com/tsstore/tsstore/fsm"
	pb "github.com/tsstore/tsstore/proto/tsstorev1"
	"github.com/tsstore/tsstore/tiering"
)

// Retention of tiered segments: a cut drops segments whose only copy is
// in the store. Every node applies it (reads below the cut are
// OFFSET_COMPACTED, reads above return what they did), and the leader
// deletes the dropped segments' objects once no stored snapshot of its
// own references them (a snapshot being sent may still read them); the
// objects of the kept segments stay. A restart afterwards needs none of
// the deleted objects.
func TestTierRetentionDeletesObjects(t *testing.T) {
	target, err := tiering.NewFSTarget(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	tc := newTierCluster(t, fastTier(target))
	next := appendBatches(t, tc, "p1", 80)
	waitNextOffset(t, tc.nodes, next)
	waitManifest(t, tc, "sealed segments tiered", allTiered(4))
	for _, n := range tc.nodes {
		waitEvicted(t, n)
	}
	tiered := tc.leader().proc.Retention().Segments

	ctx := ctxT(t)
	rc := dialRetention(t, tc.leader())
	if _, err := rc.SetRetention(ctx, &pb.SetRetentionRequest{Policy: &pb.RetentionPolicy{Prefix: "run/", MaxBytes: 3 * (64 << 10)}}); err != nil {
		t.Fatal(err)
	}
	cut, err := rc.Compact(ctx, &pb.CompactRequest{})
	if err != nil || !cut.Committed || cut.Cut == 0 {
		t.Fatalf("compact: %v, %v", cut, err)
	}
	waitAllApplied(t, tc)
	var dropped, kept []fsm.ManifestEntry
	for _, e := range tiered {
		if e.NextOffset <= cut.Cut {
			dropped = append(dropped, e)
		} else {
			kept = append(kept, e)
		}
	}
	if len(dropped) == 0 || len(kept) == 0 {
		t.Fatalf("cut %d drops %d and keeps %d tiered segments; the test wants both", cut.Cut, len(dropped), len(kept))
	}
	for _, n := range tc.nodes {
		checkCompacted(t, n, cut.Cut)
		if err := readRange(t, n, cut.Cut, next); err != nil {
			t.Fatalf("%s: read above the cut: %v", n.cfg.NodeID, err)
		}
	}

	// The snapshots taken for eviction reference the dropped objects:
	// new ones replace them (two are kept), then the objects go.
	for range 3 {
		appendBatches(t, tc, "p2-"+time.Now().Format("150405.000000000"), 1)
		waitAllApplied(t, tc)
		snapshotLive(t, tc)
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, e := range dropped {
		for {
			_, err := target.Head(ctx, e.Key)
			if errors.Is(err, tiering.ErrNotFound) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if time.Now().After(deadline) {
				t.Fatalf("the object %s of dropped segment %d is still in the store", e.Key, e.BaseOffset)
			}
			time.Sleep(20 * time.Millisecond) // deletion runs on the leader's tiering tick
		}
	}
	for _, e := range kept {
		if _, err := target.Head(ctx, e.Key); err != nil {
			t.Fatalf("the object %s of kept segment %d: %v", e.Key, e.BaseOffset, err)
		}
	}
	// Restarted, a node opens and reads without the deleted objects.
	fi := tc.followerIndex()
	f := restartNode(t, tc, fi, nil)
	waitAllApplied(t, tc)
	checkCompacted(t, f, cut.Cut)
	if err := readRange(t, f, cut.Cut, next); err != nil {
		t.Fatalf("read above the cut after a restart: %v", err)
	}
}
