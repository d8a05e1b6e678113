package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/tsstore/tsstore/bench"
	"github.com/tsstore/tsstore/client"
	pb "github.com/tsstore/tsstore/proto/tsstorev1"
)

// The t workload (issue #13's goal "replay of a 10M-event log of which 90%
// is tiered at >= 50% of the all-local replay speed"), on the local
// cluster only:
//
//  1. the nodes run without cold tiering while t loads --t-events events
//     (d's loader) and replays the whole log with a fresh client: the
//     all-local rate (t-local);
//  2. every node is stopped and started again with cold tiering on: the
//     tier target (--tier-dir <bench dir>/tier unless --t-tier-args names
//     one), a hot-bytes budget of tierHotShare of the leader's .log bytes
//     (so about 90% of the log goes to the store), a --t-cache-bytes block
//     cache, and --t-tier-args last (they override);
//  3. t waits, polling every node's ListRetention (what `tsstore tier
//     status` shows), until the leader has no backlog and every node has
//     evicted its local copy of every tiered segment;
//  4. a fresh client replays the whole log again, from cold (the nodes
//     were restarted, their block caches are empty): t-cold, with the
//     ratio to t-local and the tier metrics the replay moved (GETs, bytes
//     fetched, cache hits and misses, summed over the nodes);
//  5. t-disk: every node's data directory and .log bytes before and after.
//
// The restart is what keeps tiering off during the load and the local
// replay: the tier policy is fixed at start.

// tierSegmentBytes is the segment size of the local cluster when t runs
// (unless k's or --serve-args say otherwise): 8 MiB, so that a 10% hot
// budget leaves about 10% of a 1M-event log local instead of whole 64 MiB
// segments.
var tierServeArgs = []string{"--segment-bytes", "8388608"}

// tierHotShare is the share of the log's .log bytes the hot-bytes budget
// keeps local.
const tierHotShare = 0.10

const (
	tierGoal        = 0.5 // issue #13: tiered replay >= 50% of all-local
	tierWaitTimeout = 20 * time.Minute
	tierPoll        = 500 * time.Millisecond
)

type tierBenchFlags struct {
	events     int
	tierArgs   []string
	cacheBytes int64
}

// tierNodeState is one node's view of where the segments are.
type tierNodeState struct {
	tieredBytes, localBytes, bothBytes int64
	tiered, both                       int
	backlog                            uint64
	target                             string
}

func (s tierNodeState) fraction() float64 {
	all := s.tieredBytes + s.localBytes + s.bothBytes
	if all == 0 {
		return 0
	}
	return float64(s.tieredBytes) / float64(all)
}

func (b *benchRun) tierReplay(ctx context.Context) ([]bench.Result, error) {
	if b.lc == nil {
		return nil, errors.New("t needs the local cluster")
	}
	if err := b.loadTo(ctx, b.f.tier.events); err != nil {
		return nil, err
	}
	li, err := b.lc.leader(ctx)
	if err != nil {
		return nil, err
	}
	st, err := b.lc.c.Nodes[li].Status(ctx)
	if err != nil {
		return nil, err
	}
	next := st.GetNextOffset()
	nameN := countName(int(next))
	local, err := b.tierMeasure(ctx, "t-local", fmt.Sprintf("replay %s events, all local", nameN), next)
	if err != nil {
		return nil, err
	}
	before := make([]map[string]int64, len(b.lc.c.Nodes))
	for i, n := range b.lc.c.Nodes {
		if before[i], err = diskBytes(n.DataDir); err != nil {
			return nil, err
		}
	}
	hot := int64(float64(before[li]["log"]) * tierHotShare)
	if dir := b.tierDir(); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
	}
	args := b.tierArgs(hot)
	fmt.Fprintf(b.log, "bench: t: restarting the nodes with %s\n", strings.Join(args, " "))
	for _, n := range b.lc.c.Nodes {
		if err := n.Stop(30 * time.Second); err != nil {
			return nil, err
		}
	}
	for _, n := range b.lc.c.Nodes {
		n.AddArgs(args...)
		if err := n.Start(); err != nil {
			return nil, err
		}
	}
	if _, err := b.lc.leader(ctx); err != nil {
		b.lc.c.TailLogs(b.log, 20)
		return nil, err
	}
	waitStart := time.Now()
	states, err := b.waitTiered(ctx)
	if err != nil {
		b.lc.c.TailLogs(b.log, 20)
		return nil, err
	}
	waited := time.Since(waitStart)
	m0, err := b.scrapeNodes(ctx)
	if err != nil {
		return nil, err
	}
	cold, err := b.tierMeasure(ctx, "t-cold", fmt.Sprintf("replay %s events from cold, tiered", nameN), next)
	if err != nil {
		return nil, err
	}
	m1, err := b.scrapeNodes(ctx)
	if err != nil {
		return nil, err
	}
	delta := func(metric string) float64 {
		var d float64
		for i := range m1 {
			d += sumSeries(m1[i], metric) - sumSeries(m0[i], metric)
		}
		return d
	}
	frac := 1.0
	var perNode []string
	for i, s := range states {
		frac = min(frac, s.fraction())
		perNode = append(perNode, fmt.Sprintf("%s %.1f%% (%d segments)", b.lc.c.Nodes[i].ID, 100*s.fraction(), s.tiered))
	}
	ratio := cold.EventsPS / local.EventsPS
	verdict := "met"
	if ratio < tierGoal {
		verdict = "NOT met"
	}
	gets, fetched := delta("tsstore_tier_get_duration_seconds_count"), delta("tsstore_tier_fetched_bytes_total")
	hits, misses := delta("tsstore_tier_cache_hits_total"), delta("tsstore_tier_cache_misses_total")
	local.Note = fmt.Sprintf("offsets [0, %d), every segment on the nodes' disks, no tier target configured; a fresh client; %d-byte payloads", next, b.f.size)
	cold.Name = fmt.Sprintf("replay %s events from cold, %.0f%% tiered", nameN, 100*frac)
	cold.TieredFraction = bench.F(frac)
	cold.Note = fmt.Sprintf("the same offsets after restarting the nodes with cold tiering to %s and waiting %.1f s until every tiered segment was evicted, (tiered share of the log's bytes: %s); "+
		"a fresh client, block cache %s per node; %.1f%% of t-local's rate: issue #13's goal (>= %.0f%% with 90%% tiered) %s; "+
		"during the replay, over the nodes: %.0f tier GETs, %.1f MB fetched from the store, block cache %.0f hits / %.0f misses",
		states[li].target, waited.Seconds(), strings.Join(perNode, ", "), humanBytes(b.f.tier.cacheBytes), 100*ratio, 100*tierGoal, verdict,
		gets, fetched/1e6, hits, misses)
	disk := bench.Result{Workload: "t-disk", Name: "disk per node before and after tiering", Events: int64(next), TieredFraction: bench.F(frac)}
	after := make([]map[string]int64, len(b.lc.c.Nodes))
	for i, n := range b.lc.c.Nodes {
		if after[i], err = diskBytes(n.DataDir); err != nil {
			return nil, err
		}
	}
	// Snapshots taken before the eviction hard-link the evicted .log
	// files: the disk is freed once newer snapshots reap them.
	if err := b.reapSnapshots(ctx); err != nil {
		return nil, err
	}
	var rows []string
	var leaderReaped int64
	for i, n := range b.lc.c.Nodes {
		reaped, err := diskBytes(n.DataDir)
		if err != nil {
			return nil, err
		}
		if i == li {
			leaderReaped = sumUse(reaped)
		}
		rows = append(rows, fmt.Sprintf("%s: data dir %.1f -> %.1f -> %.1f MB, .log %.1f -> %.1f MB", n.ID,
			float64(sumUse(before[i]))/1e6, float64(sumUse(after[i]))/1e6, float64(sumUse(reaped))/1e6,
			float64(before[i]["log"])/1e6, float64(after[i]["log"])/1e6))
	}
	disk.SegmentBytesPerEvent = bench.F(float64(leaderReaped) / float64(next))
	disk.Note = fmt.Sprintf("du of each node's data directory (segments, indexes, snapshots, raft/, checkpoint) before the restart, after tiering, and after %d new snapshots per node reaped those taken before the eviction, and of its segment .log files before and after tiering: %s; "+
		"hot budget %s (%.0f%% of the leader's .log bytes); bytes/event is the leader's whole data dir after the reap",
		tierReapSnapshots, strings.Join(rows, "; "), humanBytes(hot), 100*tierHotShare)
	if dir := b.tierDir(); dir != "" {
		if use, err := diskBytes(dir); err == nil {
			disk.Note += fmt.Sprintf("; the tier directory (shared by the nodes) holds %.1f MB", float64(sumUse(use))/1e6)
		}
	}
	return []bench.Result{local, cold, disk}, nil
}

// tierReapSnapshots is how many snapshots reapSnapshots takes on each
// node: more than the nodes keep (snapshot-retain, 2 by default), so
// none taken before the eviction is left.
const tierReapSnapshots = 3

// reapSnapshots appends one event and then snapshots every node, three
// times: a snapshot needs something new to be taken.
func (b *benchRun) reapSnapshots(ctx context.Context) error {
	p := b.cl.NewProducer("")
	for k := range tierReapSnapshots {
		if _, err := p.Append(ctx, b.event(fmt.Sprintf("run/bench-%s-t-reap-%d", b.runID, k))); err != nil {
			return err
		}
		for _, addr := range b.lc.c.APIAddrs() {
			conn, err := b.lc.dial(addr)
			if err != nil {
				return err
			}
			_, err = pb.NewClusterClient(conn).Snapshot(ctx, &pb.SnapshotRequest{})
			conn.Close()
			if err != nil {
				return fmt.Errorf("snapshot of %s: %w", addr, err)
			}
		}
	}
	return nil
}

func sumUse(use map[string]int64) int64 {
	var n int64
	for _, v := range use {
		n += v
	}
	return n
}

// tierDir is the tier directory t points the nodes at, or "" when
// --t-tier-args names the target.
func (b *benchRun) tierDir() string {
	if slices.Contains(b.f.tier.tierArgs, "--tier-dir") || slices.Contains(b.f.tier.tierArgs, "--tier-s3-bucket") {
		return ""
	}
	for _, a := range b.f.tier.tierArgs {
		if strings.HasPrefix(a, "--tier-dir=") || strings.HasPrefix(a, "--tier-s3-bucket=") {
			return ""
		}
	}
	return filepath.Join(b.lc.dir, "tier")
}

// tierArgs are the serve flags the nodes restart with.
func (b *benchRun) tierArgs(hot int64) []string {
	var args []string
	if dir := b.tierDir(); dir != "" {
		args = append(args, "--tier-dir", dir)
	}
	args = append(args, "--tier-hot-bytes", fmt.Sprint(max(hot, 1)), "--tier-interval", "200ms",
		"--tier-cache-bytes", fmt.Sprint(b.f.tier.cacheBytes))
	return append(args, b.f.tier.tierArgs...)
}

// tierMeasure replays offsets [0, next) with a new client (no connection
// or cache carried over from the load).
func (b *benchRun) tierMeasure(ctx context.Context, id, name string, next uint64) (bench.Result, error) {
	cl, err := client.New(client.DefaultConfig(b.lc.c.APIAddrs()...))
	if err != nil {
		return bench.Result{}, err
	}
	defer cl.Close()
	cpu0 := b.cpu()
	r, err := b.measure(ctx, id, name, func(ctx context.Context, yield func(int)) error {
		for ev, err := range cl.Replay(ctx, 0, client.To(next)) {
			if err != nil {
				return err
			}
			yield(len(ev.Payload))
		}
		return nil
	})
	if err == nil && r.Events != int64(next) {
		err = fmt.Errorf("%s: replayed %d events, want %d", id, r.Events, next)
	}
	fmt.Fprintf(b.log, "bench: %s: %.0f events/s, %.1f MB/s; %s\n", id, r.EventsPS, r.MBPS, b.cpuNote(cpu0, r.Events))
	return r, err
}

// waitTiered polls every node's ListRetention until the leader reports no
// backlog and every node has some segments tiered and no tiered segment
// still local, twice in a row.
func (b *benchRun) waitTiered(ctx context.Context) ([]tierNodeState, error) {
	cl, err := client.New(client.DefaultConfig(b.lc.c.APIAddrs()...))
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	wctx, cancel := context.WithTimeout(ctx, tierWaitTimeout)
	defer cancel()
	stop := b.prog.Track("t: waiting until the log is tiered and evicted on every node", 0, func() int64 { return 0 })
	defer stop()
	settled := 0
	var states []tierNodeState
	lastLog := time.Now()
	for {
		states = states[:0]
		done := true
		for _, addr := range b.lc.c.APIAddrs() {
			s, err := tierState(wctx, cl, addr)
			if err != nil {
				return nil, err
			}
			states = append(states, s)
			if s.tiered == 0 || s.both > 0 || s.backlog > 0 || s.target == "" {
				done = false
			}
		}
		if time.Since(lastLog) > 10*time.Second {
			lastLog = time.Now()
			fmt.Fprintf(b.log, "bench: t: waiting for tiering: %+v\n", states)
		}
		if done {
			if settled++; settled == 2 {
				return states, nil
			}
		} else {
			settled = 0
		}
		select {
		case <-wctx.Done():
			return nil, fmt.Errorf("t: the log was not tiered and evicted within %v: %+v", tierWaitTimeout, states)
		case <-time.After(tierPoll):
		}
	}
}

func tierState(ctx context.Context, cl *client.Client, addr string) (tierNodeState, error) {
	conn, err := cl.NodeConn(addr)
	if err != nil {
		return tierNodeState{}, err
	}
	r, err := pb.NewRetentionClient(conn).ListRetention(ctx, &pb.ListRetentionRequest{})
	if err != nil {
		return tierNodeState{}, fmt.Errorf("list retention on %s: %w", addr, err)
	}
	s := tierNodeState{backlog: r.GetTierBacklogSegments(), target: r.GetTierTarget()}
	for _, seg := range r.GetSegments() {
		n := int64(seg.GetSizeBytes())
		switch tierLocation(seg) {
		case "tiered":
			s.tiered++
			s.tieredBytes += n
		case "tiered+local":
			s.both++
			s.bothBytes += n
		case "local":
			s.localBytes += n
		}
	}
	return s, nil
}
