package server

import (
	"bytes"
	"context"
	"io"
	"strings"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/tsstore/tsstore/proto/tsstorev1"
	"github.com/tsstore/tsstore/tiering"
)

// readDownTarget fails reads (GetRange, Head) while down; uploads go on.
type readDownTarget struct {
	tiering.Target
	down atomic.Bool
}

func (d *readDownTarget) GetRange(ctx context.Context, key string, off, n int64) (io.ReadCloser, error) {
	if d.down.Load() {
		return nil, errStoreDown
	}
	return d.Target.GetRange(ctx, key, off, n)
}

func (d *readDownTarget) Head(ctx context.Context, key string) (tiering.ObjectInfo, error) {
	if d.down.Load() {
		return tiering.ObjectInfo{}, errStoreDown
	}
	return d.Target.Head(ctx, key)
}

// A read of tiered offsets while the tier target cannot be read fails
// Unavailable (the bytes are not lost: try again), not Internal and not
// DataLoss, on every node; once the target answers again the same read
// returns every batch, as before it went down.
func TestTierReadWhileStoreDown(t *testing.T) {
	fst, err := tiering.NewFSTarget(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	target := &readDownTarget{Target: fst}
	cache := tiering.DefaultCacheConfig()
	cache.BlockBytes, cache.CapBytes, cache.Readahead = 8<<10, 16<<10, 1 // tiny: reads go to the store
	tc := newTierCluster(t, fastTier(target).withCache(cache))
	next := appendBatches(t, tc, "p1", 80)
	waitNextOffset(t, tc.nodes, next)
	before, err := readThreeWays(t, tc.nodes[0], next)
	if err != nil {
		t.Fatal(err)
	}
	waitManifest(t, tc, "sealed segments tiered", allTiered(3))
	for _, n := range tc.nodes {
		waitEvicted(t, n)
	}

	target.down.Store(true)
	for _, n := range tc.nodes {
		rd, err := dial(t, n).Read(ctxT(t), &pb.ReadRequest{FromOffset: 0, ToOffset: next})
		if err == nil {
			_, err = rawRead(rd.Recv, 0)
		}
		if status.Code(err) != codes.Unavailable || !strings.Contains(status.Convert(err).Message(), "tier target") {
			t.Fatalf("%s: read of tiered offsets with the store down: %v, want Unavailable naming the tier target", n.cfg.NodeID, err)
		}
	}

	target.down.Store(false)
	for _, n := range tc.nodes {
		after, err := readThreeWays(t, n, next)
		if err != nil {
			t.Fatalf("%s: read after the store came back: %v", n.cfg.NodeID, err)
		}
		if !bytes.Equal(after.all, before.all) || !bytes.Equal(after.stream, before.stream) || !bytes.Equal(after.sub, before.sub) {
			t.Fatalf("%s: reads after the store came back differ from the reads before tiering", n.cfg.NodeID)
		}
	}
}
