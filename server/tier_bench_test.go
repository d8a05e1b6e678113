package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tsstore/tsstore/fsm"
	"github.com/tsstore/tsstore/internal/s3test"
	pb "github.com/tsstore/tsstore/proto/tsstorev1"
	"github.com/tsstore/tsstore/segment"
	"github.com/tsstore/tsstore/tiering"
)

// dirBytes sums the sizes of the files in dir whose names end in one of
// suffixes (all files when none is given).
func dirBytes(b *testing.B, dir string, suffixes ...string) int64 {
	b.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		b.Fatal(err)
	}
	var n int64
	for _, e := range ents {
		match := len(suffixes) == 0
		for _, s := range suffixes {
			match = match || strings.HasSuffix(e.Name(), s)
		}
		if fi, err := e.Info(); err == nil && match && !e.IsDir() {
			n += fi.Size()
		}
	}
	return n
}

// BenchmarkTierReplay replays a whole log through the gRPC Read path
// from one node, first with every segment local, then with about 90% of
// it tiered to a real S3 server on loopback (versitygw) and evicted, read
// back through a block cache smaller than the log (so every pass is a
// cold read of the tiered part). TSSTORE_TIER_BENCH_MB sets the log size
// (default 64), TSSTORE_TIER_BENCH_BLOCK_KB the cache's block size
// (default 4096). It reports the local .log bytes and the index files'
// bytes before and after tiering (docs/benchmarks.md, Cold tiering).
//
//	go test -run '^$' -bench BenchmarkTierReplay -benchtime 5x ./server/
func BenchmarkTierReplay(b *testing.B) {
	mb := 64
	if v, err := strconv.Atoi(os.Getenv("TSSTORE_TIER_BENCH_MB")); err == nil && v > 0 {
		mb = v
	}
	gw := s3test.Start(b)
	gw.CreateBucket("cold")
	s3cfg := tiering.DefaultS3Config()
	s3cfg.Endpoint, s3cfg.Bucket, s3cfg.Prefix, s3cfg.PathStyle = gw.Endpoint(), "cold", "tsstore", true
	s3cfg.AccessKeyID, s3cfg.SecretAccessKey = gw.AccessKey, gw.SecretKey
	s3t, err := tiering.NewS3Target(context.Background(), s3cfg)
	if err != nil {
		b.Fatal(err)
	}
	target := &downTarget{Target: s3t}
	target.down.Store(true)
	var addrs []string
	for range 2 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		addrs = append(addrs, l.Addr().String())
		l.Close()
	}
	cfg := DefaultConfig()
	cfg.NodeID, cfg.DataDir, cfg.RaftAddr, cfg.APIAddr = "n1", b.TempDir(), addrs[0], addrs[1]
	cfg.Bootstrap = []Peer{{ID: "n1", RaftAddr: cfg.RaftAddr}}
	cfg.HeartbeatTimeout, cfg.ElectionTimeout, cfg.LeaderLeaseTimeout = 200*time.Millisecond, 200*time.Millisecond, 100*time.Millisecond
	cfg.MinFreeBytes = 0
	cfg.Segment.SegmentBytes = 8 << 20 // several 1 MiB blocks per object, as with the 64 MiB default
	cfg.RetentionInterval = 0
	cache := tiering.DefaultCacheConfig()
	if v, err := strconv.Atoi(os.Getenv("TSSTORE_TIER_BENCH_BLOCK_KB")); err == nil && v > 0 {
		cache.BlockBytes = int64(v) << 10
	}
	// Smaller than the log: every pass reads the tiered part from the store.
	cache.CapBytes = int64(cache.Readahead+2) * cache.BlockBytes
	cfg.Tier = TierConfig{Target: target, HotBytes: int64(mb) << 20 / 10, Interval: 50 * time.Millisecond, MaxBackoff: 100 * time.Millisecond,
		SweepInterval: time.Hour, Cache: cache}
	n, err := newBenchNode(cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer n.Close()
	conn, err := grpc.NewClient(n.APIAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	c := pb.NewEventStoreClient(conn)
	ctx := context.Background()
	payload := strings.Repeat("e", 1000)
	for i := 0; i < mb*10; i++ { // 100 events of ~1 KB per append: ~100 KB
		evs := make([]*pb.Event, 100)
		for j := range evs {
			evs[j] = &pb.Event{Stream: fmt.Sprintf("run/%d", j%16), Type: "Step", Payload: []byte(payload)}
		}
		if _, err := c.Append(ctx, &pb.AppendRequest{Events: evs}); err != nil {
			b.Fatal(err)
		}
	}
	next := n.proc.NextOffset()
	logDir := filepath.Join(cfg.DataDir, "fsm", "log")
	replay := func(b *testing.B) {
		var total int64
		for b.Loop() {
			total = 0
			rd, err := c.Read(ctx, &pb.ReadRequest{FromOffset: 0, ToOffset: next})
			if err != nil {
				b.Fatal(err)
			}
			for {
				resp, err := rd.Recv()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					b.Fatal(err)
				}
				total += int64(len(resp.Batches))
			}
		}
		b.SetBytes(total)
		b.ReportMetric(float64(dirBytes(b, logDir, segment.LogSuffix)), "local-log-B")
		b.ReportMetric(float64(dirBytes(b, logDir, segment.IndexSuffix, segment.TimeIndexSuffix, segment.StreamsSuffix, segment.TieredSuffix)), "local-index-B")
	}
	b.Run("local", replay)

	target.down.Store(false)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		var tiered, all int64
		_ = n.proc.WithLog(func(l *segment.Log) error {
			for _, s := range l.Segments() {
				all += s.Size
				if s.Tiered {
					tiered += s.Size
				}
			}
			return nil
		})
		var committed int64
		for _, e := range n.proc.Retention().Segments {
			if e.State == fsm.SegmentTiered {
				committed += e.Size
			}
		}
		if backlog, _ := n.tierBacklogNow(time.Now()); backlog == 0 && tiered > 0 && tiered == committed {
			b.Logf("tiered and evicted %d of %d bytes (%.1f%%)", tiered, all, 100*float64(tiered)/float64(all))
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("tiered %d of %d bytes after 2 minutes", tiered, all)
		}
		time.Sleep(50 * time.Millisecond)
	}
	b.Run("tiered90", replay)
	st := n.tierCache.Stats()
	b.Logf("cache: %d hits, %d misses, %d prefetches, %d bytes fetched", st.Hits, st.Misses, st.Prefetches, st.FetchedBytes)
}

// newBenchNode starts a one-node cluster and waits until it leads.
func newBenchNode(cfg Config) (*Node, error) {
	n, err := New(cfg)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(10 * time.Second)
	for n.raft.State() != raft.Leader {
		if time.Now().After(deadline) {
			n.Close()
			return nil, errors.New("no leader after 10 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return n, nil
}
