package server

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tsstore/tsstore/client"
	"github.com/tsstore/tsstore/client/train"
	"github.com/tsstore/tsstore/fsm"
	pb "github.com/tsstore/tsstore/proto/tsstorev1"
	"github.com/tsstore/tsstore/segment"
)

// waitRewritten waits until every node's local segments have their
// manifest digests (the committed rewrites are done everywhere).
func waitRewritten(t *testing.T, tc *testCluster) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for _, n := range tc.nodes {
		if n == nil {
			continue
		}
		for {
			ok := true
			for _, s := range n.proc.Retention().Segments {
				if s.State != fsm.SegmentLocal {
					continue
				}
				var d uint32
				var err error
				_ = n.proc.WithLog(func(l *segment.Log) error { d, err = l.Digest(s.BaseOffset, false); return nil })
				if err != nil || d != s.Digest {
					ok = false
				}
			}
			if ok {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: rewrites not done after 30s", n.cfg.NodeID)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// Run compaction end to end: a finished run's events covered by its
// latest snapshot go from the sealed segments on every replica (same
// digests), resume gives the same state and hash as before, checkpoints
// and the whole-log read (SDK gap detection) still pass, and a
// single-stream read into the compacted range is told so (typed).
func TestRunCompaction(t *testing.T) {
	tc := newTestCluster(t, 3, func(c *Config) {
		c.Segment.SegmentBytes = 64 << 10
		c.RunSnapshotBatches = 40
		c.RetentionInterval = 0
		c.RunCompaction = true
	})
	c := sdk(t, tc)
	ctx := ctxT(t)
	const run = "gpt-1"
	gen, err := c.StartRun(ctx, run, "")
	if err != nil {
		t.Fatal(err)
	}
	writeRun(t, ctx, c, run, gen, 1, 400) // 800 batches: snapshots every 40
	p := c.NewProducer("")
	p.SetRunGeneration(gen)
	if _, err := appendTyped(t, ctx, p, run, train.TrainingFinished{Step: 400, Reason: "done"}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		info, err := c.RunInfo(ctx, run)
		if err != nil {
			t.Fatal(err)
		}
		if info.SnapshotsTaken >= 20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d snapshots", info.SnapshotsTaken)
		}
		time.Sleep(20 * time.Millisecond)
	}
	waitAllApplied(t, tc)
	before, err := c.ResumeRun(ctx, run)
	if err != nil {
		t.Fatal(err)
	}
	cps := func() int {
		n := 0
		for _, err := range c.Replay(ctx, 0, client.Stream(run), client.EventTypes("CheckpointSaved"), client.To(tc.leader().proc.NextOffset())) {
			if err != nil {
				t.Fatal(err)
			}
			n++
		}
		return n
	}
	cpBefore := cps()
	var sizeBefore int64
	for _, s := range tc.leader().proc.Retention().Segments {
		sizeBefore += s.Size
	}
	l := tc.leader()
	// tsstore compact --dry-run, through a follower: the rewrites are
	// listed, smaller, and none is made.
	rc := dialRetention(t, tc.follower())
	dry, err := rc.Compact(ctx, &pb.CompactRequest{DryRun: true})
	if err != nil || len(dry.Rewrites) == 0 || dry.RewritesCommitted != 0 {
		t.Fatalf("dry run: %v, %v", dry, err)
	}
	for _, r := range dry.Rewrites {
		if r.Reason != "finished run" || r.Stream != run || r.SizeAfter >= r.SizeBefore || !slices.Contains(r.KeptTypes, "CheckpointSaved") {
			t.Fatalf("dry run lists %v", r)
		}
	}
	if got := l.thinStats(); got != (fsm.ThinStats{}) {
		t.Fatalf("a dry run rewrote segments: %+v", got)
	}
	// tsstore compact: the same rewrites, committed.
	res, err := rc.Compact(ctx, &pb.CompactRequest{})
	if err != nil || int(res.RewritesCommitted) != len(dry.Rewrites) {
		t.Fatalf("compact committed %v of %d rewrites: %v", res.GetRewritesCommitted(), len(dry.Rewrites), err)
	}
	waitAllApplied(t, tc)
	waitRewritten(t, tc)
	want := digests(t, tc.leader())
	for _, n := range tc.nodes {
		if got := digests(t, n); got != want {
			t.Fatalf("digests differ:\n%s: %s\nleader: %s", n.cfg.NodeID, got, want)
		}
	}
	var sizeAfter int64
	for _, s := range tc.leader().proc.Retention().Segments {
		sizeAfter += s.Size
	}
	t.Logf("sealed segments: %d bytes before, %d after", sizeBefore, sizeAfter)
	if sizeAfter*2 > sizeBefore {
		t.Fatalf("sealed segments: %d bytes before, %d after", sizeBefore, sizeAfter)
	}
	// A second tick finds nothing more to do.
	if done, err := l.compactRuns(time.Now()); err != nil || done != 0 {
		t.Fatalf("second tick: %d, %v", done, err)
	}

	after, err := c.ResumeRun(ctx, run)
	if err != nil {
		t.Fatal(err)
	}
	if after.State.Hash != before.State.Hash || after.State.Events != before.State.Events || after.NextStep != before.NextStep {
		t.Fatalf("resume after compaction: hash %x events %d next %d; before %x %d %d",
			after.State.Hash[:4], after.State.Events, after.NextStep, before.State.Hash[:4], before.State.Events, before.NextStep)
	}
	if got := cps(); got != cpBefore || got == 0 {
		t.Fatalf("%d checkpoints after, %d before", got, cpBefore)
	}
	// The whole log, unfiltered, passes the SDK's gap detection.
	end := tc.leader().proc.NextOffset()
	var seen uint64
	for b, err := range c.ReadBatches(ctx, 0, client.To(end)) {
		if err != nil {
			t.Fatalf("unfiltered read across compacted ranges: %v", err)
		}
		seen = b.Header().NextOffset()
	}
	if seen != end {
		t.Fatalf("read ended at %d, want %d", seen, end)
	}
	// A single-stream read into the compacted range: typed, not a gap.
	for _, err := range c.Replay(ctx, 0, client.Stream(run), client.To(end)) {
		if err == nil {
			continue
		}
		var oc *client.OffsetCompactedError
		if !errors.As(err, &oc) || oc.FirstOffset == 0 {
			t.Fatalf("stream read into the compacted range: %v", err)
		}
		break
	}
	// A restart keeps it.
	for i, n := range tc.nodes {
		if n != tc.leader() {
			restartNode(t, tc, i, nil)
			break
		}
	}
	waitAllApplied(t, tc)
	for _, n := range tc.nodes {
		if got := digests(t, n); got != want {
			t.Fatalf("digests differ after restart:\n%s: %s\nleader: %s", n.cfg.NodeID, got, want)
		}
	}
}

// A follower down while a run is compacted catches up by InstallSnapshot
// (TrailingLogs is 8) and lands on the same thinned segments.
func TestRunCompactionInstallSnapshot(t *testing.T) {
	tc := newTestCluster(t, 3, func(c *Config) {
		c.Segment.SegmentBytes = 64 << 10
		c.RunSnapshotBatches = 40
		c.RetentionInterval = 0
		c.RunCompaction = true
		c.TrailingLogs = 8
	})
	c := sdk(t, tc)
	ctx := ctxT(t)
	const run = "gpt-2"
	gen, err := c.StartRun(ctx, run, "")
	if err != nil {
		t.Fatal(err)
	}
	writeRun(t, ctx, c, run, gen, 1, 300)
	p := c.NewProducer("")
	p.SetRunGeneration(gen)
	if _, err := appendTyped(t, ctx, p, run, train.TrainingFinished{Step: 300, Reason: "done"}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(20 * time.Second); ; {
		info, err := c.RunInfo(ctx, run)
		if err != nil {
			t.Fatal(err)
		}
		if info.SnapshotsTaken >= 15 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d snapshots", info.SnapshotsTaken)
		}
		time.Sleep(20 * time.Millisecond)
	}
	waitAllApplied(t, tc)
	before, err := c.ResumeRun(ctx, run)
	if err != nil {
		t.Fatal(err)
	}
	fi := tc.followerIndex()
	f := restartNode(t, tc, fi, func() {
		l := tc.leader()
		if done, err := l.compactRuns(time.Now()); err != nil || done == 0 {
			t.Fatalf("compactRuns: %d, %v", done, err)
		}
		q := c.NewProducer("other")
		for i := range 40 {
			if _, err := q.Append(ctx, client.Event{Stream: "other/x", Type: "T", Payload: []byte(fmt.Sprint(i))}); err != nil {
				t.Fatal(err)
			}
		}
		snapshotLive(t, tc)
		for i := range 5 {
			if _, err := q.Append(ctx, client.Event{Stream: "other/x", Type: "T", Payload: []byte(fmt.Sprint(i))}); err != nil {
				t.Fatal(err)
			}
		}
	})
	waitAllApplied(t, tc)
	if idx := f.raft.Stats()["last_snapshot_index"]; idx == "0" {
		t.Fatal("the follower caught up without a snapshot: the test needs InstallSnapshot")
	}
	waitRewritten(t, tc)
	want := digests(t, tc.leader())
	for _, n := range tc.nodes {
		if got := digests(t, n); got != want {
			t.Fatalf("digests differ after InstallSnapshot:\n%s: %s\nleader: %s", n.cfg.NodeID, got, want)
		}
	}
	if len(f.proc.Retention().Thins) == 0 {
		t.Fatal("the follower's state has no rewrite")
	}
	after, err := c.ResumeRun(ctx, run)
	if err != nil || after.State.Hash != before.State.Hash {
		t.Fatalf("resume after: %v", err)
	}
}

// A run whose newest event a retention cut removed does not stop run
// compaction of the others: its type is unknown, so it is skipped as not
// finished (every tick used to fail with "offset no longer stored").
func TestRunCompactionSkipsRunCutByRetention(t *testing.T) {
	tc := newTestCluster(t, 1, func(c *Config) {
		c.Segment.SegmentBytes = 64 << 10
		c.RunSnapshotBatches = 40
		c.RetentionInterval = 0
		c.RunCompaction = true
	})
	c := sdk(t, tc)
	ctx := ctxT(t)
	waitSnapshots := func(run string, n uint64) {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			info, err := c.RunInfo(ctx, run)
			if err != nil {
				t.Fatal(err)
			}
			if info.SnapshotsTaken >= n {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d snapshots", run, info.SnapshotsTaken)
			}
		}
	}
	// "old" never finishes; "new" does, after it.
	gen, err := c.StartRun(ctx, "old", "")
	if err != nil {
		t.Fatal(err)
	}
	writeRun(t, ctx, c, "old", gen, 1, 100)
	waitSnapshots("old", 2)
	l := tc.leader()
	// Filler, so that "old" lies in sealed segments of its own.
	raw := dial(t, l)
	for range 4 {
		var evs []*pb.Event
		for range 100 {
			evs = append(evs, ev("fill", strings.Repeat("f", 1000)))
		}
		if _, err := raw.Append(ctx, &pb.AppendRequest{Events: evs}); err != nil {
			t.Fatal(err)
		}
	}
	newStart := l.proc.NextOffset()
	gen, err = c.StartRun(ctx, "new", "")
	if err != nil {
		t.Fatal(err)
	}
	writeRun(t, ctx, c, "new", gen, 1, 400)
	p := c.NewProducer("")
	p.SetRunGeneration(gen)
	if _, err := appendTyped(t, ctx, p, "new", train.TrainingFinished{Step: 400, Reason: "done"}); err != nil {
		t.Fatal(err)
	}
	waitSnapshots("new", 10)
	waitAllApplied(t, tc)
	// A policy on every stream that keeps the segments from the one
	// holding "new"'s start on: "old" is cut away, its snapshots too.
	var keep int64
	for _, e := range l.proc.Retention().Segments {
		if e.NextOffset > newStart {
			keep += e.Size
		}
	}
	rc := dialRetention(t, l)
	if _, err := rc.SetRetention(ctx, &pb.SetRetentionRequest{Policy: &pb.RetentionPolicy{Prefix: "", MaxBytes: keep}}); err != nil {
		t.Fatal(err)
	}
	res, err := rc.Compact(ctx, &pb.CompactRequest{})
	if err != nil {
		t.Fatalf("compact: %v", err)
	}
	if res.Cut == 0 || res.Cut > newStart {
		t.Fatalf("cut at %d; want one at or below the new run's start %d, above 0", res.Cut, newStart)
	}
	if res.RewritesCommitted == 0 {
		t.Fatalf("no rewrite of the finished run committed: %v", res)
	}
	for _, r := range res.Rewrites {
		if !strings.HasSuffix(r.Stream, "new") {
			t.Fatalf("a rewrite of %s, not of the finished run", r.Stream)
		}
	}
}

// A run started after a retention cut gets its snapshots and is compacted
// once finished, and a read of its stream from 0 starts at its first
// event. Before, the snapshotter folded a new run from offset 0, which a
// cut makes compacted: every run started after the first cut got no
// snapshot, so run compaction never thinned it (tsstore bench k: 7
// rewrites for 121 finished runs), and a stream read from 0 was refused
// OFFSET_COMPACTED although every event of the stream was kept.
func TestRunStartedAfterACutIsSnapshottedAndCompacted(t *testing.T) {
	tc := newTestCluster(t, 1, func(c *Config) {
		c.Segment.SegmentBytes = 64 << 10
		c.RunSnapshotBatches = 40
		c.RetentionInterval = 0
		c.RunCompaction = true
	})
	c := sdk(t, tc)
	ctx := ctxT(t)
	l := tc.leader()
	raw := dial(t, l)
	for range 4 { // sealed segments of filler
		var evs []*pb.Event
		for range 100 {
			evs = append(evs, ev("fill", strings.Repeat("f", 1000)))
		}
		if _, err := raw.Append(ctx, &pb.AppendRequest{Events: evs}); err != nil {
			t.Fatal(err)
		}
	}
	rc := dialRetention(t, l)
	if _, err := rc.SetRetention(ctx, &pb.SetRetentionRequest{Policy: &pb.RetentionPolicy{Prefix: "fill", MaxBytes: 1}}); err != nil {
		t.Fatal(err)
	}
	res, err := rc.Compact(ctx, &pb.CompactRequest{})
	if err != nil || res.Cut == 0 {
		t.Fatalf("compact: %v, %v; want a cut", res, err)
	}
	gen, err := c.StartRun(ctx, "late", "")
	if err != nil {
		t.Fatal(err)
	}
	writeRun(t, ctx, c, "late", gen, 1, 400)
	p := c.NewProducer("")
	p.SetRunGeneration(gen)
	if _, err := appendTyped(t, ctx, p, "late", train.TrainingFinished{Step: 400, Reason: "done"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.FoldRun(ctx, "late", train.Target{}); err != nil {
		t.Fatalf("fold of a run that starts above the cut, from 0: %v", err)
	}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		info, err := c.RunInfo(ctx, "late")
		if err != nil {
			t.Fatal(err)
		}
		if info.SnapshotsTaken >= 10 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d snapshots of a run started after a cut, want 10 (800 BatchCompleted, one every 40)", info.SnapshotsTaken)
		}
	}
	waitAllApplied(t, tc)
	// Its events lie in sealed segments now (the filler sealed them).
	for range 2 {
		var evs []*pb.Event
		for range 100 {
			evs = append(evs, ev("fill", strings.Repeat("f", 1000)))
		}
		if _, err := raw.Append(ctx, &pb.AppendRequest{Events: evs}); err != nil {
			t.Fatal(err)
		}
	}
	res, err = rc.Compact(ctx, &pb.CompactRequest{})
	if err != nil {
		t.Fatalf("compact: %v", err)
	}
	if res.RewritesCommitted == 0 {
		t.Fatalf("no rewrite of the finished run committed: %v", res)
	}
	for _, r := range res.Rewrites {
		if r.Stream != "late" {
			t.Fatalf("a rewrite of %s, not of the finished run", r.Stream)
		}
	}
}
