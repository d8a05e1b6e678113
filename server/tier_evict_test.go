package server

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/tsstore/tsstore/fsm"
	"github.com/tsstore/tsstore/internal/s3test"
	pb "github.com/tsstore/tsstore/proto/tsstorev1"
	"github.com/tsstore/tsstore/segment"
	"github.com/tsstore/tsstore/tiering"
)

// rawRead concatenates the raw batches of a Read or Subscribe stream
// until EOF, or until want bytes (want > 0, for a subscription).
func rawRead(recv func() (*pb.ReadResponse, error), want int) ([]byte, error) {
	var out []byte
	for want <= 0 || len(out) < want {
		resp, err := recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, resp.Batches...)
	}
	return out, nil
}

// tierReads is what a client reads of the log through the three read
// paths: the whole log (Read), one stream's replay (Read of a stream),
// and a subscription to that stream (its history).
type tierReads struct{ all, stream, sub []byte }

func readThreeWays(t *testing.T, n *Node, next uint64) (tierReads, error) {
	t.Helper()
	c := dial(t, n)
	var r tierReads
	rd, err := c.Read(ctxT(t), &pb.ReadRequest{FromOffset: 0, ToOffset: next})
	if err == nil {
		r.all, err = rawRead(rd.Recv, 0)
	}
	if err != nil {
		return r, err
	}
	rd, err = c.Read(ctxT(t), &pb.ReadRequest{Stream: "run/1", FromVersion: 1, ToOffset: next})
	if err == nil {
		r.stream, err = rawRead(rd.Recv, 0)
	}
	if err != nil {
		return r, err
	}
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	sub, err := c.Subscribe(ctx, &pb.ReadRequest{Stream: "run/1", FromVersion: 1})
	if err == nil {
		// The history is the stream's batches up to next: as many bytes
		// as the replay's.
		r.sub, err = rawRead(sub.Recv, len(r.stream))
	}
	return r, err
}

// localLogBytes sums the .log files in a node's segment directory.
func localLogBytes(t *testing.T, n *Node) (bytes int64, files map[string]bool) {
	t.Helper()
	dir := filepath.Join(n.cfg.DataDir, "fsm", "log")
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	files = map[string]bool{}
	for _, e := range ents {
		files[e.Name()] = true
		if strings.HasSuffix(e.Name(), segment.LogSuffix) {
			fi, err := e.Info()
			if err != nil {
				t.Fatal(err)
			}
			bytes += fi.Size()
		}
	}
	return bytes, files
}

// waitEvicted waits until every sealed segment of n's log that the
// manifest commits as tiered is tiered locally (its .log evicted).
func waitEvicted(t *testing.T, n *Node) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		local := map[uint64]bool{}
		_ = n.proc.WithLog(func(l *segment.Log) error {
			for _, s := range l.Segments() {
				local[s.BaseOffset] = s.Tiered
			}
			return nil
		})
		done := true
		for _, e := range n.proc.Retention().Segments {
			if e.State == fsm.SegmentTiered && !local[e.BaseOffset] {
				done = false
			}
		}
		if done {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: tiered segments still local after 30 s", n.cfg.NodeID)
		}
		time.Sleep(20 * time.Millisecond) // eviction runs on the tiering tick; nothing to wait on
	}
}

// Against a real S3 server (versitygw): once the leader has tiered the
// sealed segments, every replica drops its local .log (index files and
// a marker stay, disk use goes down by the tiered bytes), and Read,
// a stream replay and Subscribe return the same bytes as before, also
// after a restart and through a snapshot. A deleted object and a
// flipped byte in an object fail the read with DataLoss naming the key.
func TestTierEvictAndReadVersityGW(t *testing.T) {
	gw := s3test.Start(t)
	gw.CreateBucket("cold")
	cfg := tiering.DefaultS3Config()
	cfg.Endpoint, cfg.Bucket, cfg.Prefix, cfg.PathStyle = gw.Endpoint(), "cold", "tsstore", true
	cfg.AccessKeyID, cfg.SecretAccessKey = gw.AccessKey, gw.SecretKey
	cfg.RequestTimeout = 5 * time.Second
	s3t, err := tiering.NewS3Target(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	target := &downTarget{Target: s3t}
	target.down.Store(true) // nothing is uploaded until the reads before are taken
	cache := tiering.DefaultCacheConfig()
	cache.BlockBytes, cache.CapBytes, cache.Readahead = 8<<10, 16<<10, 1 // tiny: reads go to the store
	tc := newTierCluster(t, fastTier(target).withCache(cache))
	next := appendBatches(t, tc, "p1", 80)
	waitNextOffset(t, tc.nodes, next)
	waitAllApplied(t, tc)

	want, err := readThreeWays(t, tc.nodes[0], next)
	if err != nil {
		t.Fatal(err)
	}
	if len(want.stream) == 0 || !bytes.Equal(want.sub, want.stream) {
		t.Fatalf("reads before: %d stream bytes, %d subscription bytes", len(want.stream), len(want.sub))
	}
	before := map[string]int64{}
	for _, n := range tc.nodes {
		before[n.cfg.NodeID], _ = localLogBytes(t, n)
	}

	target.down.Store(false)
	waitManifest(t, tc, "every sealed segment tiered", allTiered(4))
	segs := tc.nodes[0].proc.Retention().Segments
	var tieredBytes int64
	for _, e := range segs {
		tieredBytes += e.Size
	}
	check := func(what string, n *Node) {
		t.Helper()
		got, err := readThreeWays(t, n, next)
		if err != nil {
			t.Fatalf("%s: %s: %v", n.cfg.NodeID, what, err)
		}
		if !bytes.Equal(got.all, want.all) || !bytes.Equal(got.stream, want.stream) || !bytes.Equal(got.sub, want.sub) {
			t.Fatalf("%s: %s: reads differ from before tiering (%d/%d, %d/%d, %d/%d bytes)", n.cfg.NodeID, what,
				len(got.all), len(want.all), len(got.stream), len(want.stream), len(got.sub), len(want.sub))
		}
	}
	for _, n := range tc.nodes {
		waitEvicted(t, n)
		after, files := localLogBytes(t, n)
		for _, e := range segs {
			if files[segment.FileName(e.BaseOffset)] || !files[strings.TrimSuffix(segment.FileName(e.BaseOffset), segment.LogSuffix)+segment.TieredSuffix] {
				t.Fatalf("%s: segment %d: .log still there or no marker: %v", n.cfg.NodeID, e.BaseOffset, files)
			}
		}
		if before[n.cfg.NodeID]-after != tieredBytes {
			t.Fatalf("%s: .log bytes %d -> %d, want %d fewer", n.cfg.NodeID, before[n.cfg.NodeID], after, tieredBytes)
		}
		// The counter moves just after the log's eviction, which
		// waitEvicted saw: wait for the last one's count too.
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			got := counterValue(t, n.metrics.tierEvictedBytes)
			if got == float64(tieredBytes) {
				break
			}
			if got > float64(tieredBytes) || time.Now().After(deadline) {
				t.Fatalf("%s: tsstore_tier_evicted_bytes_total %v, want %d", n.cfg.NodeID, got, tieredBytes)
			}
		}
		check("after eviction", n)
	}
	if st := tc.nodes[0].tierCache.Stats(); st.Misses == 0 || st.FetchedBytes == 0 || st.CachedBytes > cache.CapBytes {
		t.Fatalf("cache stats %+v: want misses, fetched bytes, at most %d cached", st, cache.CapBytes)
	}

	// A snapshot references the tiered segments by key (no local bytes).
	leader := tc.leader()
	if err := leader.raft.Snapshot().Error(); err != nil {
		t.Fatalf("snapshot after eviction: %v", err)
	}
	metas, err := leader.snaps.List()
	if err != nil || len(metas) == 0 {
		t.Fatalf("snapshots: %v, %v", metas, err)
	}
	meta, err := os.ReadFile(filepath.Join(leader.cfg.DataDir, "snapshots", metas[0].ID, "meta.json"))
	if err != nil || !bytes.Contains(meta, []byte(segs[0].Key)) {
		t.Fatalf("snapshot meta.json does not reference %s: %s, %v", segs[0].Key, meta, err)
	}
	// Its links are the active segment and the tiered segments' marker
	// and index files: a version 2 stream of about the hot set.
	if metas[0].Size > 64<<10+tieredBytes/10 {
		t.Fatalf("snapshot of %d bytes with %d bytes tiered: it carries tiered bytes", metas[0].Size, tieredBytes)
	}
	// Its stream (what InstallSnapshot and backups send) verifies end to
	// end without reading the store.
	_, rc, err := leader.snaps.Open(metas[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, fsm.VerifySnapshotStream(rc)); err != nil {
		t.Fatalf("snapshot stream with tiered parts: %v", err)
	}
	rc.Close()

	// A node restarts: it opens the tiered segments from their markers.
	i := 1
	tc.nodes[i].Close()
	tc.nodes[i] = nil
	n, err := New(tc.cfgs[i])
	if err != nil {
		t.Fatal(err)
	}
	tc.nodes[i] = n
	waitAllApplied(t, tc)
	check("after a restart", n)
	// Without the tier target a node with evicted segments refuses to
	// start instead of failing reads of their offsets.
	noTier := tc.cfgs[2]
	noTier.Tier = TierConfig{}
	tc.nodes[2].Close()
	tc.nodes[2] = nil
	if _, err := New(noTier); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), segment.TieredSuffix) {
		t.Fatalf("start without the tier target: %v, want ErrConfig naming a marker", err)
	}
	if tc.nodes[2], err = New(tc.cfgs[2]); err != nil {
		t.Fatal(err)
	}
	waitAllApplied(t, tc)

	// A deleted object: DataLoss naming the key, on every node.
	lost := segs[0]
	if err := s3t.Delete(context.Background(), lost.Key); err != nil {
		t.Fatal(err)
	}
	for _, n := range tc.nodes {
		err := readRange(t, n, lost.BaseOffset, lost.NextOffset)
		if status.Code(err) != codes.DataLoss || !strings.Contains(status.Convert(err).Message(), lost.Key) {
			t.Fatalf("%s: read of a deleted object: %v, want DataLoss naming %s", n.cfg.NodeID, err, lost.Key)
		}
	}
	// A flipped byte in the middle of another object: DataLoss, never the
	// damaged batch.
	bad := segs[1]
	path := filepath.Join(gw.Root, "data", "cold", filepath.FromSlash("tsstore/"+bad.Key))
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x10
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, n := range tc.nodes {
		err := readRange(t, n, bad.BaseOffset, bad.NextOffset)
		if status.Code(err) != codes.DataLoss || !strings.Contains(status.Convert(err).Message(), bad.Key) {
			t.Fatalf("%s: read of a damaged object: %v, want DataLoss naming %s", n.cfg.NodeID, err, bad.Key)
		}
	}
	// `tsstore repair` of it says no peer can help, naming the key; the
	// reads did not queue a repair.
	repair := pb.NewRepairClient(dialWith(t, tc.leader().APIAddr(), insecure.NewCredentials()))
	resp, err := repair.RepairSegments(ctxT(t), &pb.RepairSegmentsRequest{BaseOffsets: []uint64{bad.BaseOffset}})
	if err != nil || len(resp.Segments) != 1 || resp.Segments[0].Result != repairFailed || !strings.Contains(resp.Segments[0].Error, bad.Key) {
		t.Fatalf("repair of a damaged object: %v, %v", resp, err)
	}
	for _, n := range tc.nodes {
		if got := n.damagedCount(); got != 0 {
			t.Fatalf("%s: %d segments queued for peer repair after reads of damaged objects", n.cfg.NodeID, got)
		}
	}
}

// A follower that misses entries while the segments are tiered catches
// up by InstallSnapshot: the leader's snapshot references the tiered
// segments by key (a version 2 stream with their marker and index
// files), the follower installs them as tiered without reading the
// store, evicts the segments sealed since once they are tiered, and
// reads the same as the leader. TestTierWipedFollowerGetsHotSetVersityGW
// counts the bytes.
func TestTierInstallSnapshotVersityGW(t *testing.T) {
	gw := s3test.Start(t)
	gw.CreateBucket("cold")
	cfg := tiering.DefaultS3Config()
	cfg.Endpoint, cfg.Bucket, cfg.Prefix, cfg.PathStyle = gw.Endpoint(), "cold", "tsstore", true
	cfg.AccessKeyID, cfg.SecretAccessKey = gw.AccessKey, gw.SecretKey
	target, err := tiering.NewS3Target(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	tc := newTestCluster(t, 3, func(c *Config) {
		c.Segment.SegmentBytes = 64 << 10
		c.TrailingLogs = 8
		c.RetentionInterval = 0
		c.Tier = fastTier(target)
	})
	next := appendBatches(t, tc, "p1", 60)
	waitNextOffset(t, tc.nodes, next)
	waitManifest(t, tc, "sealed segments tiered", func(r fsm.Retention) bool {
		return len(r.Segments) >= 3 && r.Segments[len(r.Segments)-1].State == fsm.SegmentTiered
	})
	for _, n := range tc.nodes {
		waitEvicted(t, n)
	}
	fi := tc.followerIndex()
	f := restartNode(t, tc, fi, func() {
		next = appendBatches(t, tc, "p2", 60)
		snapshotLive(t, tc)
		next = appendBatches(t, tc, "p3", 20)
	})
	waitNextOffset(t, tc.nodes, next)
	waitAllApplied(t, tc)
	if idx := f.raft.Stats()["last_snapshot_index"]; idx == "0" {
		t.Fatal("the follower caught up without a snapshot: the test needs InstallSnapshot")
	}
	waitManifest(t, tc, "the new sealed segments tiered", func(r fsm.Retention) bool {
		return r.Segments[len(r.Segments)-1].State == fsm.SegmentTiered
	})
	waitEvicted(t, f)
	want, err := readThreeWays(t, tc.leader(), next)
	if err != nil {
		t.Fatal(err)
	}
	got, err := readThreeWays(t, f, next)
	if err != nil {
		t.Fatalf("%s after InstallSnapshot: %v", f.cfg.NodeID, err)
	}
	if !bytes.Equal(got.all, want.all) || !bytes.Equal(got.stream, want.stream) || !bytes.Equal(got.sub, want.sub) {
		t.Fatalf("%s reads differ from the leader's after InstallSnapshot", f.cfg.NodeID)
	}
}

// A node evicts a tiered segment only once a durable checkpoint covers
// it (taking a snapshot for that), so a restart rebuilds its state
// without reading the store: a node restarts and serves while every
// object is gone. Before, a restart scanned the evicted segments above
// the checkpoint back from the store, and a node whose object was
// deleted could never start again (jepsen's tiering scenario found it).
func TestTierEvictOnlyBelowCheckpoint(t *testing.T) {
	dir := t.TempDir()
	target, err := tiering.NewFSTarget(dir)
	if err != nil {
		t.Fatal(err)
	}
	tc := newTierCluster(t, fastTier(target))
	next := appendBatches(t, tc, "p1", 80)
	waitNextOffset(t, tc.nodes, next)
	waitManifest(t, tc, "sealed segments tiered", func(r fsm.Retention) bool {
		tiered := 0
		for _, e := range r.Segments {
			if e.State == fsm.SegmentTiered {
				tiered++
			}
		}
		return tiered >= 3
	})
	for _, n := range tc.nodes {
		waitEvicted(t, n)
		cp := n.proc.CheckpointedOffset()
		_ = n.proc.WithLog(func(l *segment.Log) error {
			for _, s := range l.Segments() {
				if s.Tiered && s.NextOffset > cp {
					t.Errorf("%s: segment [%d, %d) evicted above the checkpoint's offset %d", n.cfg.NodeID, s.BaseOffset, s.NextOffset, cp)
				}
			}
			return nil
		})
	}
	// Every object lost: restarts still work.
	err = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			err = os.Remove(p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	i := 1
	tc.nodes[i].Close()
	tc.nodes[i] = nil
	n, err := New(tc.cfgs[i])
	if err != nil {
		t.Fatalf("restart with every tiered object gone: %v", err)
	}
	tc.nodes[i] = n
	next = appendBatches(t, tc, "p2", 5)
	waitNextOffset(t, tc.nodes, next)
	if err := readRange(t, n, next-1, next); err != nil {
		t.Fatalf("read of the newest event after the restart: %v", err)
	}
}

// lostTarget answers Head of the first segment's object (base offset 0)
// with ErrNotFound, as a store that lost it.
type lostTarget struct{ tiering.Target }

func (l lostTarget) Head(ctx context.Context, key string) (tiering.ObjectInfo, error) {
	if strings.Contains(key, "/00000000000000000000-") {
		return tiering.ObjectInfo{}, tiering.ErrNotFound
	}
	return l.Target.Head(ctx, key)
}

// A committed segment whose object is missing keeps its local copy (it
// may be the last one) and does not stop the eviction of the others
// (jepsen's tiering scenario: a follower rebuilt by InstallSnapshot after
// an object was deleted kept every segment local).
func TestTierEvictSkipsMissingObject(t *testing.T) {
	target, err := tiering.NewFSTarget(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	tc := newTierCluster(t, fastTier(lostTarget{target}))
	next := appendBatches(t, tc, "p1", 80)
	waitNextOffset(t, tc.nodes, next)
	waitManifest(t, tc, "sealed segments tiered", func(r fsm.Retention) bool {
		tiered := 0
		for _, e := range r.Segments {
			if e.State == fsm.SegmentTiered {
				tiered++
			}
		}
		return tiered >= 3
	})
	for _, n := range tc.nodes {
		deadline := time.Now().Add(30 * time.Second)
		for {
			local := map[uint64]bool{}
			_ = n.proc.WithLog(func(l *segment.Log) error {
				for _, s := range l.Segments() {
					local[s.BaseOffset] = !s.Tiered
				}
				return nil
			})
			left := 0
			for _, e := range n.proc.Retention().Segments {
				if e.State == fsm.SegmentTiered && e.BaseOffset != 0 && local[e.BaseOffset] {
					left++
				}
			}
			if left == 0 && local[0] {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d tiered segments after the lost one still local (first segment local: %v)", n.cfg.NodeID, left, local[0])
			}
			time.Sleep(20 * time.Millisecond) // eviction runs on the tiering tick
		}
	}
}
