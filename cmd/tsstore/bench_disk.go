package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/tsstore/tsstore/bench"
)

// diskUse runs g: bytes on disk per event in the leader's segments (the
// .log files; index files in the note), and what the Raft log is written
// per event: the encoded Raft entries' bytes over their events, from the
// leader's group-commit metrics since it started. raft.db itself keeps
// only the entries since the last snapshot (plus TrailingLogs) and reuses
// its pages, so its file size is in the note rather than divided.
func (b *benchRun) diskUse(ctx context.Context) ([]bench.Result, error) {
	li, err := b.lc.leader(ctx)
	if err != nil {
		return nil, err
	}
	node := b.lc.c.Nodes[li]
	st, err := node.Status(ctx)
	if err != nil {
		return nil, err
	}
	events := st.GetNextOffset() - st.GetFirstOffset()
	if events == 0 {
		return nil, fmt.Errorf("the log is empty; run g with other workloads")
	}
	sizes := map[string]int64{}
	logDir := filepath.Join(node.DataDir, "fsm", "log")
	ents, err := os.ReadDir(logDir)
	if err != nil {
		return nil, err
	}
	for _, e := range ents {
		if fi, err := e.Info(); err == nil && !e.IsDir() {
			sizes[filepath.Ext(e.Name())] += fi.Size()
		}
	}
	var raftDB int64
	if fi, err := os.Stat(filepath.Join(node.DataDir, "raft", "raft.db")); err == nil {
		raftDB = fi.Size()
	}
	m, err := scrapeMetrics(ctx, b.lc.metrics[li], "tsstore_group_commit_entry_bytes_sum", "tsstore_group_commit_events_per_entry_sum")
	if err != nil {
		return nil, err
	}
	r := bench.Result{Workload: "g", Name: "bytes on disk per event", Events: int64(events),
		SegmentBytesPerEvent: bench.F(float64(sizes[".log"]) / float64(events))}
	if ev := m["tsstore_group_commit_events_per_entry_sum"]; ev > 0 {
		r.RaftBytesPerEvent = bench.F(m["tsstore_group_commit_entry_bytes_sum"] / ev)
	}
	idx := sizes[".index"] + sizes[".timeindex"] + sizes[".streams"]
	r.Note = fmt.Sprintf("%d-byte payloads; leader %s: %d events in %.1f MB of segments (.log) plus %.1f MB of indexes (%.2f B/event: offset, time and stream indexes); "+
		"raft bytes are encoded Raft entries over the events they carried (%.0f events), written once to raft.db on each node; the raft.db file is %.1f MB (bolt reuses the pages of entries dropped after a snapshot and never shrinks)",
		b.f.size, node.ID, events, float64(sizes[".log"])/1e6, float64(idx)/1e6, float64(idx)/float64(events),
		m["tsstore_group_commit_events_per_entry_sum"], float64(raftDB)/1e6)
	return []bench.Result{r}, nil
}

// scrapeMetrics reads the named unlabelled-or-labelled samples (summed
// over label sets) from a Prometheus text endpoint.
func scrapeMetrics(ctx context.Context, addr string, names ...string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	s := bufio.NewScanner(resp.Body)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		line := s.Text()
		for _, n := range names {
			rest, ok := strings.CutPrefix(line, n)
			if !ok || (rest != "" && rest[0] != '{' && rest[0] != ' ') {
				continue
			}
			f := strings.Fields(rest)
			if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
				out[n] += v
			}
		}
	}
	return out, s.Err()
}
