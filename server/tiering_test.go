package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/tsstore/tsstore/fsm"
	"github.com/tsstore/tsstore/internal/s3test"
	pb "github.com/tsstore/tsstore/proto/tsstorev1"
	"github.com/tsstore/tsstore/tiering"
)

// downTarget is a tier target that fails every call while down is set:
// an object store that is unreachable.
type downTarget struct {
	tiering.Target
	down atomic.Bool
}

var errStoreDown = errors.New("test: object store down")

func (d *downTarget) Put(ctx context.Context, key string, body io.ReaderAt, size int64, sum uint32) (tiering.ObjectInfo, error) {
	if d.down.Load() {
		return tiering.ObjectInfo{}, errStoreDown
	}
	return d.Target.Put(ctx, key, body, size, sum)
}

func (d *downTarget) Delete(ctx context.Context, key string) error {
	if d.down.Load() {
		return errStoreDown
	}
	return d.Target.Delete(ctx, key)
}

// fastTier is the tiering tests' policy for target: every sealed segment
// goes (HotBytes 1), at once (20 ms ticks, 100 ms backoff), no sweep but
// the first of a term.
func fastTier(target tiering.Target) TierConfig {
	return TierConfig{Target: target, HotBytes: 1, Interval: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond, SweepInterval: time.Hour}
}

// newTierCluster starts the tiering tests' three nodes: 64 KiB segments,
// retention only when a test asks, tiering by tier.
func newTierCluster(t *testing.T, tier TierConfig) *testCluster {
	t.Helper()
	return newTestCluster(t, 3, func(c *Config) {
		c.Segment.SegmentBytes = 64 << 10
		c.RetentionInterval = 0
		c.Tier = tier
	})
}

// withCache is c reading tiered segments back through cache.
func (c TierConfig) withCache(cache tiering.CacheConfig) TierConfig {
	c.Cache = cache
	return c
}

// waitManifest waits, on the FSM's changes, until ok holds for the
// manifest of every node.
func waitManifest(t *testing.T, tc *testCluster, what string, ok func(fsm.Retention) bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, n := range tc.nodes {
		if n == nil {
			continue // stopped
		}
		for {
			ch := n.proc.Changed()
			if ok(n.proc.Retention()) {
				break
			}
			select {
			case <-ch:
			case <-ctx.Done():
				t.Fatalf("%s: %s: manifest %+v", n.cfg.NodeID, what, n.proc.Retention().Segments)
			}
		}
	}
}

// allTiered is a manifest predicate: at least min sealed segments, every
// one committed as tiered.
func allTiered(min int) func(fsm.Retention) bool {
	return func(r fsm.Retention) bool {
		if len(r.Segments) < min {
			return false
		}
		for _, e := range r.Segments {
			if e.State != fsm.SegmentTiered {
				return false
			}
		}
		return true
	}
}

func gaugeValue(t *testing.T, g prometheus.Gauge) float64 {
	t.Helper()
	var m dto.Metric
	if err := g.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetGauge().GetValue()
}

// The leader uploads every sealed segment past the hot-bytes budget and
// commits it: every replica's manifest names the object, whose size and
// checksum are the segment's; the local copies stay readable. While the
// store is down nothing is tiered, the backlog shows, and the leader
// retries; a segment retention drops later has its object and its index
// bundle deleted.
func TestTieringUploadsAndCommits(t *testing.T) {
	fsTarget, err := tiering.NewFSTarget(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	target := &downTarget{Target: fsTarget}
	target.down.Store(true)
	tc := newTierCluster(t, fastTier(target))
	next := appendBatches(t, tc, "p1", 40)
	waitNextOffset(t, tc.nodes, next)
	waitAllApplied(t, tc)

	// Store down: failures counted, backlog shown, nothing tiered.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		var failures float64
		for _, n := range tc.nodes {
			failures += counterValue(t, n.metrics.tierFailures)
		}
		if failures >= 2 && gaugeValue(t, tc.nodes[0].metrics.tierBacklogSegments) > 0 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("store down: failures %v, backlog %v", failures, gaugeValue(t, tc.nodes[0].metrics.tierBacklogSegments))
		case <-time.After(20 * time.Millisecond):
		}
	}
	for _, n := range tc.nodes {
		for _, e := range n.proc.Retention().Segments {
			if e.State != fsm.SegmentLocal || e.Key != "" {
				t.Fatalf("%s: a segment left local while the store is down: %+v", n.cfg.NodeID, e)
			}
		}
	}

	target.down.Store(false)
	waitManifest(t, tc, "every sealed segment tiered", allTiered(2))
	segs := tc.nodes[0].proc.Retention().Segments
	for _, n := range tc.nodes[1:] {
		if got := n.proc.Retention().Segments; len(got) != len(segs) || got[0] != segs[0] || got[len(got)-1] != segs[len(segs)-1] {
			t.Fatalf("%s's manifest differs: %+v vs %+v", n.cfg.NodeID, got, segs)
		}
	}
	var bytes int64
	for _, e := range segs {
		info, err := fsTarget.Head(ctx, e.Key)
		if err != nil || info.Size != e.Size || info.Checksum != e.Digest {
			t.Fatalf("object %s: %+v, %v; manifest says %d bytes, crc32c %08x", e.Key, info, err, e.Size, e.Digest)
		}
		bytes += e.Size
	}
	// The leader counts a segment once its commit returns, which may be
	// just after every manifest shows it.
	var uploaded, tiered float64
	waitFor(t, "the tiering counters", func() bool {
		uploaded, tiered = 0, 0
		for _, n := range tc.nodes {
			uploaded += counterValue(t, n.metrics.tierUploadedBytes)
			tiered += counterValue(t, n.metrics.tierSegments)
		}
		return int(tiered) >= len(segs) && uploaded >= float64(bytes)
	})
	if int(tiered) != len(segs) {
		t.Fatalf("tsstore_tier_segments_total %v (want %d), uploaded bytes %v (want >= %d)", tiered, len(segs), uploaded, bytes)
	}
	// `tsstore retention list` shows what is where.
	lr, err := dialRetention(t, tc.follower()).ListRetention(ctxT(t), &pb.ListRetentionRequest{})
	if err != nil || len(lr.Segments) != len(segs) || lr.Segments[0].State != "tiered" || lr.Segments[0].ObjectKey != segs[0].Key {
		t.Fatalf("ListRetention: %v, %v", lr, err)
	}
	// Each object has its index bundle beside it (the sweep below must
	// delete both; once the snapshots are reaped it may do so at once, so
	// this is checked here).
	if _, err := fsTarget.Head(ctx, indexBundleKey(segs[0].Key)); err != nil {
		t.Fatalf("index bundle of %s: %v", segs[0].Key, err)
	}
	// The local copies stay: the whole log reads back on every node.
	for _, n := range tc.nodes {
		if err := readRange(t, n, 0, next); err != nil {
			t.Fatalf("%s: read of tiered segments: %v", n.cfg.NodeID, err)
		}
	}

	// A snapshot of the leader taken now references the evicted segments
	// by key: their objects stay while it is stored.
	leader := tc.leader()
	waitEvicted(t, leader)
	if _, err := dialCluster(t, leader).Snapshot(ctxT(t), &pb.SnapshotRequest{}); err != nil {
		t.Fatal(err)
	}

	// Retention drops the first two segments; the leader deletes their
	// objects once no snapshot of its references them.
	if _, err := dialRetention(t, tc.follower()).SetRetention(ctxT(t), &pb.SetRetentionRequest{Policy: &pb.RetentionPolicy{Prefix: "run/", MaxBytes: 1}}); err != nil {
		t.Fatal(err)
	}
	if _, err := dialRetention(t, tc.follower()).Compact(ctxT(t), &pb.CompactRequest{}); err != nil {
		t.Fatal(err)
	}
	waitManifest(t, tc, "first segment dropped", func(r fsm.Retention) bool { return r.Segments[0].State == fsm.SegmentDropped })
	dropped := tc.nodes[0].proc.Retention().Segments[0]
	if dropped.Key != segs[0].Key {
		t.Fatalf("dropped entry %+v lost its key %s", dropped, segs[0].Key)
	}
	// Nothing to wait on for "not deleted": give the leader 15 ticks.
	time.Sleep(300 * time.Millisecond)
	if _, err := fsTarget.Head(ctx, dropped.Key); err != nil {
		t.Fatalf("object %s deleted while a snapshot references it: %v", dropped.Key, err)
	}
	// Two newer snapshots (retain is 2) reap the one that references it.
	for i := range 2 {
		appendBatches(t, tc, fmt.Sprintf("snap%d", i), 1)
		if _, err := dialCluster(t, leader).Snapshot(ctxT(t), &pb.SnapshotRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range []string{dropped.Key, indexBundleKey(dropped.Key)} {
		for {
			_, err := fsTarget.Head(ctx, k)
			if errors.Is(err, tiering.ErrNotFound) {
				break
			}
			select {
			case <-ctx.Done():
				t.Fatalf("object %s of a dropped segment not deleted: %v", k, err)
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
}

func TestTierConfigValidate(t *testing.T) {
	target, err := tiering.NewFSTarget(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	def := DefaultConfig().Tier
	if err := def.validate(); err != nil {
		t.Fatalf("default (off): %v", err)
	}
	for name, c := range map[string]TierConfig{
		"policy without target":  {HotBytes: 1, Interval: time.Second, MaxBackoff: time.Second},
		"target without policy":  {Target: target, Interval: time.Second, MaxBackoff: time.Second},
		"negative age":           {Target: target, After: -1, HotBytes: 1, Interval: time.Second, MaxBackoff: time.Second},
		"backoff below interval": {Target: target, HotBytes: 1, Interval: time.Second, MaxBackoff: time.Millisecond, SweepInterval: time.Hour},
		"no sweep interval":      {Target: target, HotBytes: 1, Interval: time.Second, MaxBackoff: time.Second},
	} {
		if err := c.validate(); err == nil {
			t.Errorf("%s: validate accepted %+v", name, c)
		}
	}
}

func TestTierCandidates(t *testing.T) {
	now := time.Unix(1000, 0)
	e := func(base uint64, size int64, ageSec int64, st fsm.SegmentState) fsm.ManifestEntry {
		return fsm.ManifestEntry{BaseOffset: base, Size: size, LastTimestamp: now.Add(-time.Duration(ageSec) * time.Second).UnixNano(), State: st}
	}
	segs := []fsm.ManifestEntry{e(0, 10, 500, fsm.SegmentDropped), e(1, 10, 400, fsm.SegmentTiered), e(2, 10, 300, fsm.SegmentLocal),
		e(3, 10, 200, fsm.SegmentLocal), e(4, 10, 100, fsm.SegmentLocal)}
	bases := func(es []fsm.ManifestEntry) (out []uint64) {
		for _, x := range es {
			out = append(out, x.BaseOffset)
		}
		return out
	}
	for _, c := range []struct {
		after time.Duration
		hot   int64
		want  []uint64
	}{
		{250 * time.Second, 0, []uint64{2}},
		{0, 15, []uint64{2, 3}}, // 30 local bytes: two go to get to 15 or less
		{0, 30, nil},
		{150 * time.Second, 25, []uint64{2, 3}},
	} {
		if got := bases(tierCandidates(segs, now, c.after, c.hot)); len(got) != len(c.want) || (len(got) > 0 && got[len(got)-1] != c.want[len(c.want)-1]) || (len(got) > 0 && got[0] != c.want[0]) {
			t.Errorf("after %v, hot %d: %v, want %v", c.after, c.hot, got, c.want)
		}
	}
}

// Against a real S3 server (versitygw): an outage keeps every segment
// local and the backlog up; once the store is back every sealed segment
// is tiered, its object holds exactly the segment's bytes, and the
// manifest, keys included, survives a node's restart.
func TestTieringVersityGW(t *testing.T) {
	gw := s3test.Start(t)
	gw.CreateBucket("cold")
	cfg := tiering.DefaultS3Config()
	cfg.Endpoint, cfg.Bucket, cfg.Prefix, cfg.PathStyle = gw.Endpoint(), "cold", "tsstore", true
	cfg.AccessKeyID, cfg.SecretAccessKey = gw.AccessKey, gw.SecretKey
	cfg.RequestTimeout = 2 * time.Second
	target, err := tiering.NewS3Target(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	gw.Stop()
	tc := newTestCluster(t, 3, func(c *Config) {
		c.Segment.SegmentBytes = 64 << 10
		c.Tier = fastTier(target)
	})
	next := appendBatches(t, tc, "p1", 40)
	waitNextOffset(t, tc.nodes, next)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for {
		var failures float64
		for _, n := range tc.nodes {
			failures += counterValue(t, n.metrics.tierFailures)
		}
		if failures >= 1 && gaugeValue(t, tc.nodes[0].metrics.tierBacklogSegments) > 0 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("store down: failures %v", failures)
		case <-time.After(20 * time.Millisecond):
		}
	}
	for _, e := range tc.nodes[0].proc.Retention().Segments {
		if e.State != fsm.SegmentLocal {
			t.Fatalf("tiered while the store was down: %+v", e)
		}
	}

	gw.Restart()
	waitManifest(t, tc, "every sealed segment tiered", allTiered(2))
	segs := tc.nodes[0].proc.Retention().Segments
	for _, e := range segs {
		info, err := target.Head(ctx, e.Key)
		if err != nil || info.Size != e.Size || info.Checksum != e.Digest {
			t.Fatalf("object %s: %+v, %v; manifest says %d bytes, crc32c %08x", e.Key, info, err, e.Size, e.Digest)
		}
		// The posix backend's file is the segment, byte for byte.
		b, err := os.ReadFile(filepath.Join(gw.Root, "data", "cold", filepath.FromSlash("tsstore/"+e.Key)))
		if err != nil || tiering.Checksum(b) != e.Digest {
			t.Fatalf("object file of %s: %d bytes, %v", e.Key, len(b), err)
		}
	}
	// The backlog gauge follows at the node's next tick.
	waitGauge(t, tc.nodes[0].metrics.tierBacklogSegments, 0)

	// A node restarts: its manifest, keys included, is what it was.
	i := 1
	tc.nodes[i].Close()
	tc.nodes[i] = nil
	n, err := New(tc.cfgs[i])
	if err != nil {
		t.Fatal(err)
	}
	tc.nodes[i] = n
	waitAllApplied(t, tc)
	got := n.proc.Retention().Segments
	if len(got) < len(segs) {
		t.Fatalf("after restart: %d manifest entries, want at least %d", len(got), len(segs))
	}
	for j, e := range segs {
		if got[j] != e {
			t.Fatalf("after restart: entry %d is %+v, was %+v", j, got[j], e)
		}
	}
	if err := readRange(t, n, 0, next); err != nil {
		t.Fatalf("read after restart: %v", err)
	}
}

// waitGauge polls g (a gauge has no change notification) until it is want.
func waitGauge(t *testing.T, g prometheus.Gauge, want float64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for gaugeValue(t, g) != want {
		if time.Now().After(deadline) {
			t.Fatalf("gauge %v, want %v", gaugeValue(t, g), want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The leader deletes the objects of earlier terms that no manifest entry
// names (a deposed leader's uploads), and nothing else: not the tiered
// segments' objects, not keys of another form or cluster.
func TestTieringSweepsLeakedObjects(t *testing.T) {
	fsTarget, err := tiering.NewFSTarget(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	put := func(key string) {
		t.Helper()
		b := []byte(key)
		if _, err := fsTarget.Put(ctx, key, bytes.NewReader(b), int64(len(b)), tiering.Checksum(b)); err != nil {
			t.Fatal(err)
		}
	}
	cluster := DefaultConfig().ClusterName
	leaked := tierKey(cluster, 0, 10, 0, "00deadbeef00cafe")
	leakedIdx := indexBundleKey(leaked) // a bundle whose .log no entry names
	future := tierKey(cluster, 0, 10, 1<<40, "00deadbeef00cafe")
	keep := []string{future, indexBundleKey(future), cluster + "/segments/notes.txt", "other/segments/x.log",
		tierKey("other", 0, 10, 0, "00deadbeef00cafe"), indexBundleKey(tierKey("other", 0, 10, 0, "00deadbeef00cafe")),
		cluster + "/segments/x.idx"}
	put(leaked)
	put(leakedIdx)
	for _, k := range keep {
		put(k)
	}
	tc := newTestCluster(t, 3, func(c *Config) {
		c.Segment.SegmentBytes = 64 << 10
		c.Tier = fastTier(fsTarget)
	})
	next := appendBatches(t, tc, "p1", 20)
	waitNextOffset(t, tc.nodes, next)
	waitManifest(t, tc, "a segment tiered", func(r fsm.Retention) bool {
		return len(r.Segments) > 0 && r.Segments[0].State == fsm.SegmentTiered
	})
	deadline := time.Now().Add(30 * time.Second)
	for _, k := range []string{leaked, leakedIdx} {
		for {
			_, err := fsTarget.Head(ctx, k)
			if errors.Is(err, tiering.ErrNotFound) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("leaked object %s still there: %v", k, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	for _, k := range keep {
		if _, err := fsTarget.Head(ctx, k); err != nil {
			t.Fatalf("%s: %v (the sweep must leave it)", k, err)
		}
	}
	for _, e := range tc.nodes[0].proc.Retention().Segments {
		if e.Key == "" {
			continue
		}
		for _, k := range []string{e.Key, indexBundleKey(e.Key)} {
			if _, err := fsTarget.Head(ctx, k); err != nil {
				t.Fatalf("tiered object %s: %v", k, err)
			}
		}
	}
	// The sweep counts an object just after deleting it.
	var swept float64
	waitFor(t, "tsstore_tier_swept_objects_total to count both", func() bool {
		swept = 0
		for _, n := range tc.nodes {
			swept += counterValue(t, n.metrics.tierSwept)
		}
		return swept >= 2
	})
	if swept != 2 {
		t.Fatalf("tsstore_tier_swept_objects_total %v, want 2", swept)
	}
	// A sweep puts no entry in the log: it once took a raft barrier of
	// its own, which followers' FSMs never apply, so on an idle cluster
	// their linearizable reads waited behindWait and failed Unavailable.
	waitManifest(t, tc, "every sealed segment tiered", allTiered(0))
	l := tc.leader()
	last := l.raft.LastIndex()
	if err := l.sweepTier(ctx, l.raft.CurrentTerm()); err != nil {
		t.Fatal(err)
	}
	if got := l.raft.LastIndex(); got != last {
		t.Fatalf("the sweep appended Raft entries %d-%d", last+1, got)
	}
	for _, n := range tc.nodes {
		if n == l {
			continue
		}
		rctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		stream, err := dial(t, n).Read(rctx, &pb.ReadRequest{Consistency: pb.Consistency_CONSISTENCY_LINEARIZABLE})
		if err == nil {
			_, err = stream.Recv()
		}
		cancel()
		if err != nil {
			t.Fatalf("linearizable read on %s of an idle cluster after the sweep: %v", n.cfg.NodeID, err)
		}
	}
}

func TestTierKeyTerm(t *testing.T) {
	k := tierKey("c1", 100, 200, 7, "0123456789abcdef")
	if k != "c1/segments/00000000000000000100-00000000000000000200-t7-0123456789abcdef.log" {
		t.Fatalf("key %s", k)
	}
	if term, ok := tierKeyTerm("c1", k); !ok || term != 7 {
		t.Fatalf("term of %s: %d %v", k, term, ok)
	}
	for _, bad := range []string{"c2/segments/00000000000000000100-00000000000000000200-t7-0123456789abcdef.log",
		"c1/segments/100-200-t7-0123456789abcdef.log", "c1/segments/x.log", "c1/segments/00000000000000000100-00000000000000000200-t7-ab-cd.log"} {
		if _, ok := tierKeyTerm("c1", bad); ok {
			t.Errorf("%s parsed as a key of c1", bad)
		}
	}
}

// faultyTarget fails a third of the uploads before storing anything and
// a third after storing the object (the response lost), while faults is
// set: what a flaky store does. Objects and index bundles are counted
// apart (n and idxN), so the pattern does not fail every attempt, which
// puts a bundle and then an object, in lock step.
type faultyTarget struct {
	tiering.Target
	faults  atomic.Bool
	n, idxN atomic.Uint64
}

func (f *faultyTarget) Put(ctx context.Context, key string, body io.ReaderAt, size int64, sum uint32) (tiering.ObjectInfo, error) {
	if !f.faults.Load() {
		return f.Target.Put(ctx, key, body, size, sum)
	}
	n := &f.n
	if strings.HasSuffix(key, ".idx") {
		n = &f.idxN
	}
	switch n.Add(1) % 3 {
	case 0:
		return tiering.ObjectInfo{}, errors.New("test: 500 Internal Error")
	case 1:
		if _, err := f.Target.Put(ctx, key, body, size, sum); err != nil {
			return tiering.ObjectInfo{}, err
		}
		return tiering.ObjectInfo{}, errors.New("test: connection reset after the upload")
	}
	return f.Target.Put(ctx, key, body, size, sum)
}

// Under a flaky store every segment still ends up tiered, every key the
// manifest names holds the segment's bytes, the replicas agree, and once
// leadership moves the uploads no one committed are swept: the store
// holds exactly the manifest's objects and their index bundles.
func TestTieringUnderStoreFaults(t *testing.T) {
	fsTarget, err := tiering.NewFSTarget(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	target := &faultyTarget{Target: fsTarget}
	target.faults.Store(true)
	tc := newTestCluster(t, 3, func(c *Config) {
		c.Segment.SegmentBytes = 64 << 10
		c.Tier = TierConfig{Target: target, HotBytes: 1, Interval: 10 * time.Millisecond, MaxBackoff: 40 * time.Millisecond, SweepInterval: time.Hour}
	})
	next := appendBatches(t, tc, "p1", 40)
	waitNextOffset(t, tc.nodes, next)
	waitManifest(t, tc, "every sealed segment tiered under faults", allTiered(2))
	target.faults.Store(false)
	waitAllApplied(t, tc)
	segs := tc.nodes[0].proc.Retention().Segments
	named := map[string]bool{}
	ctx := context.Background()
	for _, e := range segs {
		named[e.Key], named[indexBundleKey(e.Key)] = true, true
		info, err := fsTarget.Head(ctx, e.Key)
		if err != nil || info.Size != e.Size || info.Checksum != e.Digest {
			t.Fatalf("object %s: %+v, %v", e.Key, info, err)
		}
	}
	for _, n := range tc.nodes[1:] {
		got := n.proc.Retention().Segments
		if len(got) != len(segs) {
			t.Fatalf("%s: %d entries, %s has %d", n.cfg.NodeID, len(got), tc.nodes[0].cfg.NodeID, len(segs))
		}
		for i := range got {
			if got[i] != segs[i] {
				t.Fatalf("%s: entry %d %+v, %s has %+v", n.cfg.NodeID, i, got[i], tc.nodes[0].cfg.NodeID, segs[i])
			}
		}
	}
	if target.n.Load() < 3 {
		t.Fatalf("only %d uploads under faults", target.n.Load())
	}

	// A new term: its leader sweeps the earlier terms' leaks.
	if err := tc.leader().raft.LeadershipTransfer().Error(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		var stored []string
		if err := fsTarget.List(ctx, "", func(o tiering.ObjectInfo) error { stored = append(stored, o.Key); return nil }); err != nil {
			t.Fatal(err)
		}
		extra := 0
		for _, k := range stored {
			if !named[k] {
				extra++
			}
		}
		if extra == 0 && len(stored) == len(named) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("store holds %d objects (%d not in the manifest), the manifest names %d", len(stored), extra, len(named))
		}
		time.Sleep(20 * time.Millisecond)
	}
}
