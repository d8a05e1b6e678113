package server

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/tsstore/tsstore/fsm"
)

// BenchmarkGroupCommit measures the proposer on a one-node cluster: each
// of `callers` goroutines proposes one-event requests and waits for each,
// as waiting producers do. Every entry is fsynced to raft.db before it is
// applied, so events/s shows how well group commit amortizes the fsync;
// reqs/entry is how many requests an entry carried on average.
func BenchmarkGroupCommit(b *testing.B) {
	for _, callers := range []int{1, 16, 64} {
		b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
			n := benchNode(b)
			payload := bytes.Repeat([]byte("x"), 256)
			first := n.raft.LastIndex()
			var wg sync.WaitGroup
			ctx := context.Background()
			per := (b.N + callers - 1) / callers
			b.ResetTimer()
			for c := range callers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					id := fmt.Sprintf("bench-%d", c)
					for i := range per {
						op := fsm.AppendOp{ProducerID: id, Seq: uint64(i + 1),
							Events: []fsm.Event{{Stream: "run/bench", Type: "BatchCompleted", Payload: payload}}}
						res, err := n.prop.propose(ctx, op, 300)
						if err == nil {
							err = res.Err
						}
						if err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			b.StopTimer()
			entries := n.raft.LastIndex() - first
			b.ReportMetric(float64(per*callers)/b.Elapsed().Seconds(), "events/s")
			b.ReportMetric(float64(per*callers)/float64(max(entries, 1)), "reqs/entry")
		})
	}
}

// benchNode starts a one-node cluster and waits until it leads.
func benchNode(b *testing.B) *Node {
	b.Helper()
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
	cfg.Bootstrap = []Peer{{ID: "n1", RaftAddr: addrs[0]}}
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	// Raft's loggers write to the os.Stderr they find at start; point it
	// at /dev/null meanwhile so their lines do not break benchmark output.
	devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		b.Fatal(err)
	}
	stderr := os.Stderr
	os.Stderr = devnull
	n, err := New(cfg)
	os.Stderr = stderr
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { devnull.Close() })
	b.Cleanup(func() { n.Close() })
	deadline := time.Now().Add(20 * time.Second)
	for n.raft.State() != raft.Leader || n.leaderReady.Load() != n.raft.CurrentTerm() {
		if time.Now().After(deadline) {
			b.Fatal("no leader")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return n
}
