package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tsstore/tsstore/bench"
	"github.com/tsstore/tsstore/client"
	"github.com/tsstore/tsstore/client/train"
	pb "github.com/tsstore/tsstore/proto/tsstorev1"
)

// The k workload (issue #14's goal "compaction never blocks appends for
// more than one fsync's time"): b's waiting producers for --duration
// twice, with the same training runs written beside them:
//   - k-baseline: no retention policy, and the runs never finish, so
//     nothing is cut or rewritten;
//   - k-compacting: a retention policy on every stream ("" prefix, at most
//     --k-max-bytes) and runs that end with TrainingFinished, so the
//     leader commits retention cuts and run-compaction rewrites at every
//     1 s retention tick while the producers append.
//
// The local cluster runs with compactServeArgs. Raw fsyncs of a small
// file in the cluster's directory, idle before the phases and sampled
// during each, give "one fsync" to compare the added latency with (the
// nodes export no fsync histogram).
var compactServeArgs = []string{"--segment-bytes", "1048576", "--retention-interval", "1s", "--run-compaction",
	"--run-snapshot-batches", "64"}

const (
	compactRunSteps   = 40 // steps per training run (24 events each)
	compactRunPause   = 100 * time.Millisecond
	compactIdleFsyncs = 300
	compactFsyncEvery = 50 * time.Millisecond // during the phases
)

// The leader-only counters are summed over the nodes (only the leader
// counts them); run compaction's reclaimed bytes are the leader's own.
const (
	metricCuts          = "tsstore_retention_cuts_total"
	metricCutBytes      = "tsstore_retention_reclaimed_bytes_total"
	metricRewrites      = "tsstore_run_compaction_rewrites_committed_total"
	metricRewritten     = "tsstore_run_compaction_segments_rewritten_total"
	metricThinBytes     = "tsstore_run_compaction_reclaimed_bytes_total"
	metricRewriteFailed = "tsstore_run_compaction_rewrite_failures_total"
	metricHoldCount     = "tsstore_compaction_append_hold_seconds_count"
	metricHoldSum       = "tsstore_compaction_append_hold_seconds_sum"
	metricHoldMax       = "tsstore_compaction_append_hold_max_seconds"
	metricWALCount      = "tsstore_raft_log_append_seconds_count"
	metricWALBucket     = "tsstore_raft_log_append_seconds_bucket"
	metricWALMax        = "tsstore_raft_log_append_max_seconds"
)

func (b *benchRun) compactionLoad(ctx context.Context) ([]bench.Result, error) {
	if b.lc == nil {
		return nil, errors.New("k needs the local cluster")
	}
	idle, err := fsyncLatency(ctx, b.lc.dir, compactIdleFsyncs, 0)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(b.log, "bench: k: raw fsync, idle: p50 %.2f ms, p99 %.2f ms, max %.2f ms (%d)\n",
		bench.Ms(idle.Quantile(0.5)), bench.Ms(idle.Quantile(0.99)), bench.Ms(idle.Max()), idle.Count())
	base, err := b.compactPhase(ctx, "k-baseline", false, idle)
	if err != nil {
		return nil, err
	}
	comp, err := b.compactPhase(ctx, "k-compacting", true, idle)
	if err != nil {
		return nil, err
	}
	if base.MaxMs != nil && comp.MaxMs != nil && comp.P50ms != nil && comp.FsyncP99ms != nil {
		comp.Note += fmt.Sprintf("; max %.2f ms vs baseline max %.2f ms (added %.2f ms), p99.9 %.2f vs %.2f ms; one fsync under this load: p50 %.2f ms, p99 %.2f ms",
			*comp.MaxMs, *base.MaxMs, *comp.MaxMs-*base.MaxMs, *comp.P999ms, *base.P999ms, *comp.FsyncP50ms, *comp.FsyncP99ms)
	}
	return []bench.Result{base, comp}, nil
}

// compactPhase runs b's producers for --duration beside the training-run
// writer and a sampled fsync, and reads what the leader committed.
func (b *benchRun) compactPhase(ctx context.Context, id string, finish bool, idle *bench.Histogram) (bench.Result, error) {
	workers := b.f.producers
	name := fmt.Sprintf("%d producers, waiting, %s", workers, map[bool]string{false: "no compaction", true: "compacting"}[finish])
	prods := make([]*client.Producer, workers)
	for i := range prods {
		prods[i] = b.cl.NewProducer("")
		if _, err := prods[i].Append(ctx, b.event(b.streamOf(id, i))); err != nil {
			return bench.Result{}, err
		}
	}
	before, err := b.scrapeNodes(ctx)
	if err != nil {
		return bench.Result{}, err
	}
	bgctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var runs int
	var runErr, fsyncErr, setErr error
	if finish {
		// The policy is set as the timed load starts, so that the first
		// cut (of everything written before) falls inside the phase.
		wg.Go(func() { setErr = b.setCompactRetention(bgctx) })
	}
	wg.Go(func() { runs, runErr = b.writeRuns(bgctx, id, finish) })
	var sampled *bench.Histogram
	wg.Go(func() { sampled, fsyncErr = fsyncLatency(bgctx, b.lc.dir, 0, compactFsyncEvery) })

	cpu0 := b.cpu()
	st := bench.Run{Workers: workers, Duration: b.f.duration, Progress: b.prog, Label: id + ": " + name}.Do(ctx,
		func(ctx context.Context, w int) (int, error) {
			_, err := prods[w].Append(ctx, b.event(b.streamOf(id, w)))
			return 1, err
		})
	cpuNote := b.cpuNote(cpu0, st.Events)
	stop()
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return bench.Result{}, err
	}
	if st.Errors > 0 {
		return bench.Result{}, fmt.Errorf("%s: %d appends failed, the last with %w", id, st.Errors, st.LastErr)
	}
	for _, err := range []error{setErr, runErr, fsyncErr} {
		if err != nil {
			return bench.Result{}, fmt.Errorf("%s: %w", id, err)
		}
	}
	after, err := b.scrapeNodes(ctx)
	if err != nil {
		return bench.Result{}, err
	}
	r := b.appendResult(id, name, st, "")
	r.MaxMs = bench.F(bench.Ms(st.Latency.Max()))
	delta := func(metric string, node int) float64 {
		return sumSeries(after[node], metric) - sumSeries(before[node], metric)
	}
	var cuts, cutBytes, rewrites, thinBytes, failed float64
	var perNode []string
	for i := range after {
		cuts += delta(metricCuts, i)
		cutBytes += delta(metricCutBytes, i)
		rewrites += delta(metricRewrites, i)
		failed += delta(metricRewriteFailed, i)
		thinBytes = max(thinBytes, delta(metricThinBytes, i))
		perNode = append(perNode, fmt.Sprintf("%s %.0f", b.lc.c.Nodes[i].ID, delta(metricRewritten, i)))
	}
	r.CutsCommitted, r.RewritesCommitted, r.ReclaimedBytes = bench.F(cuts), bench.F(rewrites), bench.F(cutBytes+thinBytes)
	holds := holdFigures(before, after)
	wal := walFigures(before, after)
	r.HoldCount, r.HoldMaxMs = bench.F(holds.count), bench.F(holds.maxMs)
	if holds.count > 0 {
		r.HoldMeanMs = bench.F(holds.sumMs / holds.count)
	}
	if sampled.Count() > 0 {
		r.FsyncP50ms, r.FsyncP99ms, r.FsyncMaxms = bench.F(bench.Ms(sampled.Quantile(0.5))), bench.F(bench.Ms(sampled.Quantile(0.99))), bench.F(bench.Ms(sampled.Max()))
	}
	r.Note = fmt.Sprintf("compaction held the apply path %.0f times on the three nodes, by section (count, mean, longest since start): %s; "+
		"the nodes' Raft log appends (one write + fsync each) in the phase: %s; "+
		"latency of one append of one event (b's producers); beside them %d training runs of %d steps written by one batching producer (%s); "+
		"retention cut %.1f MiB, run compaction freed %.1f MiB (leader), segments rewritten per node: %s, rewrite failures %.0f; "+
		"fsync = a 4 KiB write + fsync of a file in the cluster's directory every %v during the phase (idle, %d back to back: p50 %.2f ms, p99 %.2f ms, max %.2f ms); load average at the end %s; %s",
		holds.count, holds.bySection, wal, runs, compactRunSteps, map[bool]string{false: "never finished, no retention policy", true: fmt.Sprintf("each ending with TrainingFinished; retention policy \"\" max %.1f MiB", float64(b.f.kMaxBytes)/(1<<20))}[finish],
		cutBytes/(1<<20), thinBytes/(1<<20), strings.Join(perNode, ", "), failed,
		compactFsyncEvery, idle.Count(), bench.Ms(idle.Quantile(0.5)), bench.Ms(idle.Quantile(0.99)), bench.Ms(idle.Max()), loadAverage(), cpuNote)
	return r, nil
}

// setCompactRetention sets k's retention policy: every stream, at most
// --k-max-bytes.
func (b *benchRun) setCompactRetention(ctx context.Context) error {
	conn, err := b.cl.NodeConn(b.lc.c.APIAddrs()[0])
	if err != nil {
		return err
	}
	_, err = pb.NewRetentionClient(conn).SetRetention(ctx, &pb.SetRetentionRequest{
		Policy: &pb.RetentionPolicy{Prefix: "", MaxBytes: b.f.kMaxBytes}})
	if err != nil {
		return fmt.Errorf("set retention: %w", err)
	}
	return nil
}

// scrapeNodes reads every node's metrics.
func (b *benchRun) scrapeNodes(ctx context.Context) ([]map[string]float64, error) {
	out := make([]map[string]float64, len(b.lc.metrics))
	for i, addr := range b.lc.metrics {
		m, err := scrapeSeries(ctx, addr)
		if err != nil {
			return nil, err
		}
		out[i] = m
	}
	return out, nil
}

// writeRuns writes small training runs one after the other until ctx
// ends, each with its own run fence, and returns how many it started.
// With finish, each ends with TrainingFinished, so run compaction may
// thin it once its run snapshots cover it.
func (b *benchRun) writeRuns(ctx context.Context, id string, finish bool) (int, error) {
	runs := 0
	for ctx.Err() == nil {
		rb := &trainBench{name: fmt.Sprintf("bench-%s-%s-run-%d", b.runID, id, runs)}
		gen, err := b.cl.StartRun(ctx, rb.name, "tsstore bench k")
		if err != nil {
			if ctx.Err() != nil {
				return runs, nil
			}
			return runs, err
		}
		runs++
		opts := client.DefaultAsyncOptions()
		opts.RunGeneration = gen
		p, err := b.cl.NewAsyncProducer("", opts)
		if err != nil {
			return runs, err
		}
		evs := []train.Event{train.TrainingStarted{Model: "resnet50", ConfigHash: "c0ffee", WorldSize: benchRunRanks}}
		for r := range benchRunRanks {
			evs = append(evs, train.NodeJoined{Rank: r, Host: fmt.Sprintf("gpu%02d", r)})
		}
		var batch []client.Event
		for _, e := range evs {
			ce, _ := client.TrainEvent(rb.name, e)
			batch = append(batch, ce)
		}
		_, err = p.Send(ctx, batch...)
		for step := uint64(1); step <= compactRunSteps && err == nil; step++ {
			_, err = p.Send(ctx, rb.stepEvents(step)...)
		}
		if err == nil && finish {
			ce, _ := client.TrainEvent(rb.name, train.TrainingFinished{Step: compactRunSteps, Reason: "done"})
			_, err = p.Send(ctx, ce)
		}
		if cerr := p.Close(ctx); err == nil {
			err = cerr
		}
		if err != nil {
			if ctx.Err() != nil {
				return runs, nil // stopped mid-run
			}
			return runs, err
		}
		select {
		case <-ctx.Done():
		case <-time.After(compactRunPause):
		}
	}
	return runs, nil
}

// fsyncLatency times a 4 KiB write and fsync of a file in dir: n of them
// back to back, or (n == 0) one every `every` until ctx ends.
func fsyncLatency(ctx context.Context, dir string, n int, every time.Duration) (*bench.Histogram, error) {
	f, err := os.CreateTemp(dir, "bench-fsync-*")
	if err != nil {
		return nil, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	buf := make([]byte, 4096)
	h := new(bench.Histogram)
	for i := 0; n == 0 || i < n; i++ {
		if n == 0 {
			select {
			case <-ctx.Done():
				return h, nil
			case <-time.After(every):
			}
		}
		buf[0] = byte(i)
		start := time.Now()
		if _, err := f.WriteAt(buf, int64(i%16)*4096); err != nil {
			return h, err
		}
		if err := f.Sync(); err != nil {
			return h, err
		}
		h.Record(time.Since(start))
	}
	return h, nil
}

// loadAverage is the machine's 1, 5 and 15 minute load averages (Linux),
// for the notes: k's tail latencies mean little on a busy machine.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// holdSummary is what the nodes' tsstore_compaction_append_hold metrics
// say of one phase: holds counted in it (all nodes), their total, and the
// longest hold any node saw since it started (the gauge has no per-phase
// reset; k's baseline runs first and holds nothing up).
type holdSummary struct {
	count, sumMs, maxMs float64
	bySection           string
}

func holdFigures(before, after []map[string]float64) holdSummary {
	var h holdSummary
	type sec struct{ count, sumMs, maxMs float64 }
	secs := map[string]*sec{}
	for i := range after {
		for key, v := range after[i] {
			name := seriesName(key)
			if name != metricHoldCount && name != metricHoldSum && name != metricHoldMax {
				continue
			}
			section := labelValue(key, "section")
			s := secs[section]
			if s == nil {
				s = &sec{}
				secs[section] = s
			}
			switch name {
			case metricHoldCount:
				s.count += v - before[i][key]
			case metricHoldSum:
				s.sumMs += (v - before[i][key]) * 1e3
			default:
				s.maxMs = max(s.maxMs, v*1e3)
			}
		}
	}
	names := make([]string, 0, len(secs))
	for name := range secs {
		names = append(names, name)
	}
	slices.Sort(names)
	var parts []string
	for _, name := range names {
		s := secs[name]
		h.count += s.count
		h.sumMs += s.sumMs
		h.maxMs = max(h.maxMs, s.maxMs)
		mean := 0.0
		if s.count > 0 {
			mean = s.sumMs / s.count
		}
		parts = append(parts, fmt.Sprintf("%s %.0f, mean %.3f ms, longest %.2f ms", name, s.count, mean, s.maxMs))
	}
	h.bySection = strings.Join(parts, "; ")
	if h.bySection == "" {
		h.bySection = "none"
	}
	return h
}

// walFigures describes the nodes' Raft log appends in one phase (each a
// write and an fsync; tsstore_raft_log_append_seconds): their count, the
// histogram's p50 and p99 bucket bounds over all nodes, and the longest
// any node saw since it started. It is the "one fsync" of the goal,
// measured by the nodes themselves on the disk they write.
func walFigures(before, after []map[string]float64) string {
	buckets := map[float64]float64{} // upper bound -> cumulative count in the phase
	var count, maxMs float64
	for i := range after {
		for key, v := range after[i] {
			switch seriesName(key) {
			case metricWALCount:
				count += v - before[i][key]
			case metricWALMax:
				maxMs = max(maxMs, v*1e3)
			case metricWALBucket:
				le, err := strconv.ParseFloat(labelValue(key, "le"), 64)
				if err == nil {
					buckets[le] += v - before[i][key]
				}
			}
		}
	}
	if count == 0 {
		return "none"
	}
	bounds := make([]float64, 0, len(buckets))
	for le := range buckets {
		bounds = append(bounds, le)
	}
	slices.Sort(bounds)
	quantile := func(q float64) float64 {
		for _, le := range bounds {
			if buckets[le] >= q*count {
				return le * 1e3
			}
		}
		return math.Inf(1)
	}
	return fmt.Sprintf("%.0f, p50 <= %.2f ms, p99 <= %.2f ms, longest since start %.2f ms", count, quantile(0.5), quantile(0.99), maxMs)
}
