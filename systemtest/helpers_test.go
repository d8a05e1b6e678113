package systemtest

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tsstore/tsstore/internal/proccluster"
	pb "github.com/tsstore/tsstore/proto/tsstorev1"
	"github.com/tsstore/tsstore/record"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// binary builds cmd/tsstore once per test run. TSSTORE_SYSTEM_RACE=1 builds
// it with the race detector.
func binary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		root := filepath.Dir(filepath.Dir(file))
		dir, err := os.MkdirTemp("", "tsstore-bin-")
		if err != nil {
			buildErr = err
			return
		}
		var flags []string
		if os.Getenv("TSSTORE_SYSTEM_RACE") == "1" {
			flags = append(flags, "-race")
		}
		binPath, buildErr = proccluster.Build(root, dir, flags...)
	})
	if buildErr != nil {
		t.Fatalf("building tsstore: %v", buildErr)
	}
	return binPath
}

// startCluster starts three real nodes in t.TempDir() and waits for a
// leader. Node logs are printed if the test fails.
func startCluster(t *testing.T, extra ...string) *proccluster.Cluster {
	t.Helper()
	c := launch(t, proccluster.Options{Binary: binary(t), Dir: t.TempDir(), ExtraArgs: extra}, nil)
	waitLeader(t, c)
	return c
}

// launch creates the cluster opts describes, lets configure adjust its
// nodes (per-node flags), and starts it; it stops the nodes when the test
// ends and prints their logs' tails if the test failed.
func launch(t *testing.T, opts proccluster.Options, configure func(*proccluster.Cluster)) *proccluster.Cluster {
	t.Helper()
	c, err := proccluster.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		if t.Failed() {
			var b strings.Builder
			c.TailLogs(&b, 40)
			t.Log(b.String())
		}
	})
	if configure != nil {
		configure(c)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	return c
}

func waitLeader(t *testing.T, c *proccluster.Cluster) *proccluster.Node {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// waitApplied waits until every running node has applied at least the
// leader's commit index at the time of the call and holds next offsets.
func waitCaughtUp(t *testing.T, c *proccluster.Cluster, next uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, n := range c.Nodes {
		for {
			st, err := n.Status(ctx)
			if err == nil && st.NextOffset >= next {
				break
			}
			select {
			case <-ctx.Done():
				t.Fatalf("node %s did not reach offset %d: last status %v, error %v", n.ID, next, st, err)
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
}

// rawLog reads the whole log of one node as raw batch bytes.
type rawLog struct {
	bytes   []byte
	hash    string
	records []record.Record // copies
}

func readRaw(t *testing.T, addr string, to uint64) rawLog {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	stream, err := pb.NewEventStoreClient(conn).Read(ctx, &pb.ReadRequest{FromOffset: 0, ToOffset: to, MinNextOffset: to})
	if err != nil {
		t.Fatal(err)
	}
	var out rawLog
	for {
		resp, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			t.Fatalf("read from %s: %v", addr, err)
		}
		out.bytes = append(out.bytes, resp.Batches...)
	}
	buf := out.bytes
	for len(buf) > 0 {
		b, rest, err := record.Next(buf)
		if err != nil {
			t.Fatalf("%s: %v", addr, err)
		}
		it := b.Records()
		var r record.Record
		for it.Next(&r) {
			out.records = append(out.records, record.Record{
				Offset: r.Offset, StreamVersion: r.StreamVersion, Stream: clone(r.Stream), Type: clone(r.Type),
				ProducerID: clone(r.ProducerID), ProducerSeq: r.ProducerSeq, Payload: clone(r.Payload),
			})
		}
		if err := it.Err(); err != nil {
			t.Fatal(err)
		}
		buf = rest
	}
	out.hash = fmt.Sprintf("%x", sha256.Sum256(out.bytes))
	return out
}

func clone(b []byte) []byte { return append([]byte(nil), b...) }
