package main

import (
	"bufio"
	"context"
	"fmt"
	"io/fs"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/tsstore/tsstore/bench"
)

// diskUse runs g: bytes on disk per event on the leader, everything under
// its data directory (segments, indexes, snapshots, the Raft log, the
// FSM's checkpoint), as du counts them: allocated blocks, a file linked
// into a snapshot counted once. The Raft log's share (raft/: raft-wal's
// segment files, preallocated, and raft.db) is reported beside it, and the
// note splits the rest; it also says what the Raft log was written per
// event (encoded entries over their events, from the group-commit
// metrics), which raft-wal drops again after each snapshot.
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
	use, err := diskBytes(node.DataDir)
	if err != nil {
		return nil, err
	}
	m, err := scrapeMetrics(ctx, b.lc.metrics[li], "tsstore_group_commit_entry_bytes_sum", "tsstore_group_commit_events_per_entry_sum")
	if err != nil {
		return nil, err
	}
	var total int64
	for _, v := range use {
		total += v
	}
	per := func(v int64) float64 { return float64(v) / float64(events) }
	r := bench.Result{Workload: "g", Name: "bytes on disk per event", Events: int64(events),
		SegmentBytesPerEvent: bench.F(per(total)), RaftBytesPerEvent: bench.F(per(use["raft"]))}
	written := "n/a"
	if ev := m["tsstore_group_commit_events_per_entry_sum"]; ev > 0 {
		written = fmt.Sprintf("%.0f B", m["tsstore_group_commit_entry_bytes_sum"]/ev)
	}
	r.Note = fmt.Sprintf("%d-byte payloads; leader %s, %d events, %.1f MB on disk in all: segment .log %.1f B/event, "+
		"indexes %.2f B/event, raft/ %.1f MB (%.1f B/event), snapshots and checkpoint %.1f MB; the raft log was written %s per event and is dropped after each snapshot",
		b.f.size, node.ID, events, float64(total)/1e6, per(use["log"]), per(use["index"]),
		float64(use["raft"])/1e6, per(use["raft"]), float64(use["other"])/1e6, written)
	return []bench.Result{r}, nil
}

// diskBytes is du of a data directory, by kind: "log" (segment .log
// files), "index" (their index files), "raft" (raft/), "other". A file
// with several links (a segment in a snapshot) counts once.
func diskBytes(dir string) (map[string]int64, error) {
	use := map[string]int64{}
	seen := map[uint64]bool{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok || seen[st.Ino] {
			return nil
		}
		seen[st.Ino] = true
		rel, _ := filepath.Rel(dir, path)
		kind := "other"
		switch {
		case strings.HasPrefix(rel, "raft"+string(filepath.Separator)):
			kind = "raft"
		case strings.HasPrefix(rel, filepath.Join("fsm", "log")) && filepath.Ext(rel) == ".log":
			kind = "log"
		case strings.HasPrefix(rel, filepath.Join("fsm", "log")):
			kind = "index"
		}
		use[kind] += st.Blocks * 512
		return nil
	})
	return use, err
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
