package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/tsstore/tsstore/bench"
)

// memoryAndRestart runs h: for each --events size, load the log to that
// many events (as d does), then read every node's Go heap in use and
// resident set size from its metrics, and restart one follower (SIGTERM,
// start) and time it until its health is SERVING. Memory and start-up must
// not grow with the log: compare the rows of two sizes.
func (b *benchRun) memoryAndRestart(ctx context.Context) ([]bench.Result, error) {
	var out []bench.Result
	for _, n := range b.f.events {
		if err := b.loadTo(ctx, n); err != nil {
			return nil, err
		}
		r := bench.Result{Workload: "h-" + countName(n), Name: fmt.Sprintf("memory and restart at %s events", countName(n)), Events: int64(n)}
		var notes []string
		for i, node := range b.lc.c.Nodes {
			m, err := scrapeMetrics(ctx, b.lc.metrics[i], "go_memstats_heap_inuse_bytes", "process_resident_memory_bytes", "tsstore_raft_log_bytes")
			if err != nil {
				return nil, err
			}
			heap, rss := m["go_memstats_heap_inuse_bytes"], m["process_resident_memory_bytes"]
			r.HeapInuseMB = maxPtr(r.HeapInuseMB, heap/(1<<20))
			r.RSSMB = maxPtr(r.RSSMB, rss/(1<<20))
			notes = append(notes, fmt.Sprintf("%s heap %.0f MiB, RSS %.0f MiB, raft log %.1f MiB", node.ID,
				heap/(1<<20), rss/(1<<20), m["tsstore_raft_log_bytes"]/(1<<20)))
		}
		restart, err := b.restartFollower(ctx)
		if err != nil {
			return nil, err
		}
		r.RestartMs = bench.F(bench.Ms(restart))
		r.Note = fmt.Sprintf("%d-byte payloads; largest over the nodes: heap in use %.0f MiB, RSS %.0f MiB (%s); a follower restarted on this log answered SERVING after %.0f ms",
			b.f.size, *r.HeapInuseMB, *r.RSSMB, strings.Join(notes, "; "), bench.Ms(restart))
		out = append(out, r)
	}
	return out, nil
}

func maxPtr(p *float64, v float64) *float64 {
	if p == nil || v > *p {
		return bench.F(v)
	}
	return p
}

// restartFollower stops a follower with SIGTERM, starts it again and
// returns the time from the start until its health check says SERVING.
func (b *benchRun) restartFollower(ctx context.Context) (time.Duration, error) {
	li, err := b.lc.leader(ctx)
	if err != nil {
		return 0, err
	}
	node := b.lc.c.Nodes[(li+1)%len(b.lc.c.Nodes)]
	if err := node.Stop(time.Minute); err != nil {
		return 0, err
	}
	start := time.Now()
	if err := node.Start(); err != nil {
		return 0, err
	}
	conn, err := b.lc.dial(node.APIAddr)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	for ctx.Err() == nil {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		res, err := hc.Check(cctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err == nil && res.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return time.Since(start), nil
		}
		if time.Since(start) > 10*time.Minute {
			return 0, fmt.Errorf("%s not SERVING 10 minutes after its restart", node.ID)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return 0, ctx.Err()
}
