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

	"google.golang.org/grpc/metadata"

	"github.com/tsstore/tsstore/fsm"
	"github.com/tsstore/tsstore/internal/s3test"
	pb "github.com/tsstore/tsstore/proto/tsstorev1"
	"github.com/tsstore/tsstore/tiering"
)

// versityTarget starts versitygw with a bucket and returns a target in it.
func versityTarget(t *testing.T) tiering.Target {
	t.Helper()
	_, target := versity(t)
	return target
}

// versity starts versitygw with a bucket and returns it and a target in it.
func versity(t *testing.T) (*s3test.Server, tiering.Target) {
	t.Helper()
	gw := s3test.Start(t)
	gw.CreateBucket("cold")
	cfg := tiering.DefaultS3Config()
	cfg.Endpoint, cfg.Bucket, cfg.Prefix, cfg.PathStyle = gw.Endpoint(), "cold", "tsstore", true
	cfg.AccessKeyID, cfg.SecretAccessKey = gw.AccessKey, gw.SecretKey
	target, err := tiering.NewS3Target(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return gw, target
}

// tieredSplit sums the manifest's tiered and local segment bytes.
func tieredSplit(n *Node) (tiered, local int64) {
	for _, e := range n.proc.Retention().Segments {
		if e.State == fsm.SegmentTiered {
			tiered += e.Size
		} else if e.State == fsm.SegmentLocal {
			local += e.Size
		}
	}
	return tiered, local
}

// receivedSnapshotBytes returns the size of the newest snapshot n's store
// received from a leader (one that links no segment file: the whole
// stream is its state.bin), 0 if none.
func receivedSnapshotBytes(t *testing.T, n *Node) int64 {
	t.Helper()
	dir := filepath.Join(n.cfg.DataDir, "snapshots")
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got int64
	for _, e := range ents {
		links, _ := filepath.Glob(filepath.Join(dir, e.Name(), "*.seg"))
		fi, err := os.Stat(filepath.Join(dir, e.Name(), "state.bin"))
		if err != nil || len(links) > 0 {
			continue
		}
		got = max(got, fi.Size())
	}
	return got
}

// A follower whose data directory is wiped rejoins while most of the log
// is tiered: the leader's InstallSnapshot sends a version 2 stream (the
// tiered segments by key, with their marker and index files) so the
// follower receives and writes about the hot set, never the tiered bytes
// (it evicts only segments sealed after the snapshot), and then reads the
// whole log the same as the leader, the tiered part through the store.
// The store is down while the follower installs the snapshot: the
// install does not need it.
func TestTierWipedFollowerGetsHotSetVersityGW(t *testing.T) {
	gw, target := versity(t)
	tc := newTestCluster(t, 3, func(c *Config) {
		c.Segment.SegmentBytes = 64 << 10
		c.TrailingLogs = 8
		c.RetentionInterval = 0
		c.Tier = fastTier(target)
	})
	next := appendBatches(t, tc, "p1", 160)
	waitNextOffset(t, tc.nodes, next)
	waitManifest(t, tc, "sealed segments tiered", func(r fsm.Retention) bool {
		return len(r.Segments) >= 6 && r.Segments[len(r.Segments)-1].State == fsm.SegmentTiered
	})
	for _, n := range tc.nodes {
		waitEvicted(t, n)
	}
	fi := tc.followerIndex()
	tc.nodes[fi].Close()
	tc.nodes[fi] = nil
	if err := os.RemoveAll(tc.cfgs[fi].DataDir); err != nil {
		t.Fatal(err)
	}
	next = appendBatches(t, tc, "p2", 30)
	// The snapshot is taken once the segments p2 sealed are tiered and
	// evicted: it then holds the hot set only, whatever the tiering
	// tick's timing (CI once snapshotted two of them still local).
	waitNextOffset(t, liveNodes(tc), next)
	waitManifest(t, tc, "p2's sealed segments tiered", func(r fsm.Retention) bool {
		return r.Segments[len(r.Segments)-1].State == fsm.SegmentTiered
	})
	for _, n := range liveNodes(tc) {
		waitEvicted(t, n)
	}
	snapshotLive(t, tc)
	next = appendBatches(t, tc, "p3", 10)
	leader := tc.leader()
	tiered, local := tieredSplit(leader) // local: sealed, not tiered yet
	gw.Stop()
	f, err := New(tc.cfgs[fi])
	if err != nil {
		t.Fatal(err)
	}
	tc.nodes[fi] = f
	waitNextOffset(t, tc.nodes, next)
	waitAllApplied(t, tc)
	if idx := f.raft.Stats()["last_snapshot_index"]; idx == "0" {
		t.Fatal("the wiped follower caught up without a snapshot: the test needs InstallSnapshot")
	}
	gw.Restart()
	received := receivedSnapshotBytes(t, f)
	// Segments sealed since the snapshot reach the follower as bytes and
	// are evicted once tiered, as on any replica.
	waitEvicted(t, f)
	fLocal, _ := localLogBytes(t, f)
	// The hot set: the leader's .log files (the active segment and any
	// sealed one not tiered yet).
	hot, _ := localLogBytes(t, leader)
	t.Logf("log %d bytes, %d of them tiered, %d in the leader's .log files; the wiped follower received a %d-byte snapshot and holds %d bytes of .log",
		tiered+local+hot, tiered, hot, received, fLocal)
	if received == 0 || received > hot+tiered/10 {
		t.Fatalf("the follower received a %d-byte snapshot, want about the leader's %d bytes of .log (%d tiered)", received, hot, tiered)
	}
	if fLocal > hot+(64<<10) {
		t.Fatalf("the follower holds %d bytes of .log, want about the leader's %d", fLocal, hot)
	}
	if got := counterValue(t, f.metrics.tierEvictedBytes); got >= float64(tiered)/2 {
		t.Fatalf("the follower evicted %v bytes of the %d tiered: it received tiered bytes", got, tiered)
	}
	want, err := readThreeWays(t, leader, next)
	if err != nil {
		t.Fatal(err)
	}
	got, err := readThreeWays(t, f, next)
	if err != nil {
		t.Fatalf("%s after InstallSnapshot: %v", f.cfg.NodeID, err)
	}
	if !bytes.Equal(got.all, want.all) || !bytes.Equal(got.stream, want.stream) || !bytes.Equal(got.sub, want.sub) {
		t.Fatalf("%s reads differ from the leader's after InstallSnapshot (%d/%d bytes)", f.cfg.NodeID, len(got.all), len(want.all))
	}
	if st := f.tierCache.Stats(); st.FetchedBytes == 0 {
		t.Fatalf("the follower's reads fetched nothing from the store: %+v", st)
	}
}

// fetchBackupCtx is fetchBackup with request metadata.
func fetchBackupCtx(t *testing.T, ctx context.Context, n *Node) (*pb.BackupInfo, []byte) {
	t.Helper()
	stream, err := dialCluster(t, n).Backup(ctx, &pb.BackupRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var info *pb.BackupInfo
	var data bytes.Buffer
	for {
		c, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("backup from %s: %v", n.cfg.NodeID, err)
		}
		if info == nil {
			info = c.Info
			continue
		}
		data.Write(c.Data)
	}
	if info == nil || uint64(data.Len()) != info.SizeBytes {
		t.Fatalf("backup: info %v, %d data bytes", info, data.Len())
	}
	return info, data.Bytes()
}

// A backup of a mostly tiered log references the tiered objects by
// default (a small version 2 stream) and carries their bytes with
// include-tiered (a version 1 stream, every batch checked as it is
// sent); both restore into a new cluster that reads the same as the
// source, the referencing one through the tier target.
func TestTierBackupReferenceAndIncludeVersityGW(t *testing.T) {
	target := versityTarget(t)
	tier := fastTier(target)
	tc := newTierCluster(t, tier)
	next := appendBatches(t, tc, "p1", 100)
	waitNextOffset(t, tc.nodes, next)
	waitManifest(t, tc, "sealed segments tiered", func(r fsm.Retention) bool {
		return len(r.Segments) >= 4 && r.Segments[len(r.Segments)-1].State == fsm.SegmentTiered
	})
	for _, n := range tc.nodes {
		waitEvicted(t, n)
	}
	want, err := readThreeWays(t, tc.leader(), next)
	if err != nil {
		t.Fatal(err)
	}
	tiered, local := tieredSplit(tc.leader())

	refInfo, refData := fetchBackupCtx(t, ctxT(t), tc.leader())
	fullInfo, fullData := fetchBackupCtx(t, metadata.AppendToOutgoingContext(ctxT(t), IncludeTieredMD, "1"), tc.leader())
	t.Logf("log %d bytes (%d tiered): referencing backup %d bytes, include-tiered backup %d bytes", tiered+local, tiered, len(refData), len(fullData))
	ri, _, err := fsm.ReadSnapshotInfo(bytes.NewReader(refData))
	if err != nil || ri.Version != 2 || len(ri.Tiered) == 0 || int64(len(refData)) > local+tiered/10 {
		t.Fatalf("referencing backup: %d bytes, info %+v, %v", len(refData), ri, err)
	}
	fi, _, err := fsm.ReadSnapshotInfo(bytes.NewReader(fullData))
	if err != nil || fi.Version != 1 || len(fi.Tiered) != 0 || int64(len(fullData)) < tiered+local {
		t.Fatalf("include-tiered backup: %d bytes, info %+v, %v", len(fullData), fi, err)
	}
	if _, err := io.Copy(io.Discard, fsm.VerifySnapshotStream(bytes.NewReader(fullData))); err != nil {
		t.Fatal(err)
	}

	check := func(what string, rc *testCluster, next uint64) {
		t.Helper()
		rc.leader()
		waitAllApplied(t, rc)
		for _, n := range rc.nodes {
			got, err := readThreeWays(t, n, next)
			if err != nil {
				t.Fatalf("%s: %s: %v", what, n.cfg.NodeID, err)
			}
			if !bytes.Equal(got.all, want.all) || !bytes.Equal(got.stream, want.stream) || !bytes.Equal(got.sub, want.sub) {
				t.Fatalf("%s: %s reads differ from the source cluster", what, n.cfg.NodeID)
			}
		}
	}
	full := restoreClusterWith(t, 3, fullInfo, fullData, nil)
	check("restored from the include-tiered backup", full, fullInfo.NextOffset)
	full.close()
	ref := restoreClusterWith(t, 3, refInfo, refData, func(c *Config) {
		c.Segment.SegmentBytes = 64 << 10
		c.Tier = TierConfig{Target: target, After: 24 * time.Hour, Interval: time.Hour, MaxBackoff: time.Hour, SweepInterval: time.Hour}
	})
	for _, n := range ref.nodes {
		_, files := localLogBytes(t, n)
		markers := 0
		for name := range files {
			if strings.HasSuffix(name, ".tiered") {
				markers++
			}
		}
		if markers != len(ri.Tiered) {
			t.Fatalf("%s restored from the referencing backup has %d markers, want %d", n.cfg.NodeID, markers, len(ri.Tiered))
		}
	}
	check("restored from the referencing backup", ref, refInfo.NextOffset)
}
