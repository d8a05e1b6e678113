package server

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/tsstore/tsstore/internal/s3test"
	"github.com/tsstore/tsstore/segment"
	"github.com/tsstore/tsstore/tiering"
)

// rangeCountTarget counts the bytes ranged GETs return, apart for
// objects (".log") and index bundles (".idx").
type rangeCountTarget struct {
	tiering.Target
	logBytes, idxBytes atomic.Int64
}

type countingReader struct {
	io.ReadCloser
	n *atomic.Int64
}

func (c countingReader) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	c.n.Add(int64(n))
	return n, err
}

func (r *rangeCountTarget) GetRange(ctx context.Context, key string, off, n int64) (io.ReadCloser, error) {
	rc, err := r.Target.GetRange(ctx, key, off, n)
	if err != nil {
		return nil, err
	}
	counter := &r.logBytes
	if strings.HasSuffix(key, ".idx") {
		counter = &r.idxBytes
	}
	return countingReader{rc, counter}, nil
}

// tierBundleScenario: the leader uploads an index bundle beside every
// tiered object; a node whose index files of the tiered segments are
// lost restarts, fetches the bundles (the files come back byte for
// byte) and not a byte of the objects, and reads every event as the
// leader does.
func tierBundleScenario(t *testing.T, base tiering.Target) {
	target := &rangeCountTarget{Target: base}
	tc := newTierCluster(t, fastTier(target))
	next := appendBatches(t, tc, "p1", 80)
	waitNextOffset(t, tc.nodes, next)
	waitManifest(t, tc, "every sealed segment tiered", allTiered(3))
	for _, n := range tc.nodes {
		waitEvicted(t, n)
	}
	ctx := context.Background()
	segs := tc.nodes[0].proc.Retention().Segments
	for _, e := range segs {
		b, err := fetchIndexBundle(ctx, base, e.Key)
		if err != nil {
			t.Fatalf("bundle of %s: %v", e.Key, err)
		}
		if _, err := segment.DecodeIndexBundle(b, indexBundleKey(e.Key), e.BaseOffset, e.NextOffset, e.Size); err != nil {
			t.Fatalf("bundle of %s: %v", e.Key, err)
		}
	}

	i := tc.followerIndex()
	dir := filepath.Join(tc.cfgs[i].DataDir, "fsm", "log")
	lost := map[string][]byte{}
	f := restartNode(t, tc, i, func() {
		for _, e := range segs {
			paths := segment.TieredPaths(dir, e.BaseOffset)
			for _, p := range paths[1:] {
				b, err := os.ReadFile(p)
				if err != nil {
					t.Fatal(err)
				}
				lost[p] = b
				if err := os.Remove(p); err != nil {
					t.Fatal(err)
				}
			}
		}
		target.logBytes.Store(0)
		target.idxBytes.Store(0)
	})
	// New returned: the log is open, its index files are back.
	if got := target.logBytes.Load(); got != 0 {
		t.Fatalf("the restart read %d bytes of objects; the bundles were enough", got)
	}
	if target.idxBytes.Load() == 0 {
		t.Fatal("the restart fetched no index bundle")
	}
	for p, want := range lost {
		if got, err := os.ReadFile(p); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s after the restart: %v, or other bytes than the lost ones", p, err)
		}
	}
	var rec segment.RecoveryInfo
	_ = f.proc.WithLog(func(l *segment.Log) error { rec = l.Recovery(); return nil })
	if len(rec.FetchedIndexes) != len(segs) || len(rec.RebuiltIndexes) != 0 || len(rec.IndexBundleFailures) != 0 {
		t.Fatalf("recovery %+v: want the index files of %d segments fetched", rec, len(segs))
	}
	waitAllApplied(t, tc)
	want, err := readThreeWays(t, tc.leader(), next)
	if err != nil {
		t.Fatal(err)
	}
	got, err := readThreeWays(t, f, next)
	if err != nil {
		t.Fatalf("%s after the restart: %v", f.cfg.NodeID, err)
	}
	if !bytes.Equal(got.all, want.all) || !bytes.Equal(got.stream, want.stream) || !bytes.Equal(got.sub, want.sub) || len(got.stream) == 0 {
		t.Fatalf("%s reads differ from the leader's after fetching its index files", f.cfg.NodeID)
	}
}

func TestTierIndexBundleFetchedAtRestart(t *testing.T) {
	target, err := tiering.NewFSTarget(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	tierBundleScenario(t, target)
}

// The same against a real S3 server (versitygw).
func TestTierIndexBundleVersityGW(t *testing.T) {
	gw := s3test.Start(t)
	gw.CreateBucket("cold")
	cfg := tiering.DefaultS3Config()
	cfg.Endpoint, cfg.Bucket, cfg.Prefix, cfg.PathStyle = gw.Endpoint(), "cold", "tsstore", true
	cfg.AccessKeyID, cfg.SecretAccessKey = gw.AccessKey, gw.SecretKey
	target, err := tiering.NewS3Target(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	tierBundleScenario(t, target)
}

// A segment tiered without a bundle (before bundles were uploaded): a
// node that loses its index files rebuilds them from the object, and
// reads are the same.
func TestTierNoIndexBundleRebuilds(t *testing.T) {
	fsTarget, err := tiering.NewFSTarget(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	tc := newTierCluster(t, fastTier(fsTarget))
	next := appendBatches(t, tc, "p1", 40)
	waitNextOffset(t, tc.nodes, next)
	waitManifest(t, tc, "every sealed segment tiered", allTiered(2))
	for _, n := range tc.nodes {
		waitEvicted(t, n)
	}
	e := tc.nodes[0].proc.Retention().Segments[0]
	if err := fsTarget.Delete(context.Background(), indexBundleKey(e.Key)); err != nil {
		t.Fatal(err)
	}
	i := tc.followerIndex()
	dir := filepath.Join(tc.cfgs[i].DataDir, "fsm", "log")
	f := restartNode(t, tc, i, func() {
		paths := segment.TieredPaths(dir, e.BaseOffset)
		for _, p := range paths[1:] {
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
		}
	})
	var rec segment.RecoveryInfo
	_ = f.proc.WithLog(func(l *segment.Log) error { rec = l.Recovery(); return nil })
	if len(rec.RebuiltIndexes) != 1 || len(rec.IndexBundleFailures) != 1 || !strings.Contains(rec.IndexBundleFailures[0], "not found") {
		t.Fatalf("recovery %+v: want one rebuild, the bundle not found", rec)
	}
	waitAllApplied(t, tc)
	if err := readRange(t, f, 0, next); err != nil {
		t.Fatalf("read after the rebuild: %v", err)
	}
}
