package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"
)

// runConfig is what every workload of one run shares.
type runConfig struct {
	size         int
	duration     time.Duration
	producers    int
	window       int
	events       []int // log sizes for d, cumulative
	streamEvents int
	kills        int
	opTimeout    time.Duration
	pidFile      string
	workloads    map[string]bool
	nodes        []node
	log          io.Writer
}

// waitingRun is the outcome of producers that each wait for every ack.
type waitingRun struct {
	events int
	lats   []time.Duration
	errs   int
	el     time.Duration
}

// waiting runs `producers` goroutines for d, each appending one event and
// waiting for its acknowledgement before the next; errors are counted and
// the producer retries after a short pause.
func waiting(ctx context.Context, sys system, producers int, d time.Duration, payload []byte) waitingRun {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	type out struct {
		lats []time.Duration
		errs int
	}
	outs := make([]out, producers)
	var wg sync.WaitGroup
	start := time.Now()
	for p := range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			o := &outs[p]
			stream := fmt.Sprintf("p%d", p)
			for ctx.Err() == nil {
				t0 := time.Now()
				if err := sys.Append(ctx, stream, payload); err != nil {
					if ctx.Err() == nil {
						o.errs++
						time.Sleep(5 * time.Millisecond)
					}
					continue
				}
				o.lats = append(o.lats, time.Since(t0))
			}
		}()
	}
	wg.Wait()
	r := waitingRun{el: time.Since(start)}
	for _, o := range outs {
		r.events += len(o.lats)
		r.lats = append(r.lats, o.lats...)
		r.errs += o.errs
	}
	return r
}

// runAll runs the selected workloads in the order replay, disk, append,
// failover: the replay log is loaded into an empty store so d/e/g measure
// exactly the loaded events, and failover comes last because it leaves the
// cluster one node short.
func runAll(ctx context.Context, sys system, cfg runConfig) ([]Result, error) {
	payload := make([]byte, cfg.size)
	for i := range payload {
		payload[i] = byte('a' + i%26)
	}
	var res []Result
	add := func(r Result) {
		fmt.Fprintf(cfg.log, "peerbench: %s %-36s %9d events %7.2fs %10.0f ev/s p99 %.2fms %s\n",
			r.Workload, r.Name, r.Events, r.Seconds, r.EventsPS, r.P99, r.Note)
		res = append(res, r)
	}
	wantD := cfg.workloads["d"] || cfg.workloads["e"] || cfg.workloads["g"]
	loaded := 0
	every := 1
	if len(cfg.events) > 0 {
		every = max(1, slices.Max(cfg.events)/max(1, cfg.streamEvents))
	}
	var errs []error
	// A failing workload is reported and the others still run.
	replays := func() error {
		for _, n := range cfg.events {
			if n <= loaded {
				continue
			}
			t0 := time.Now()
			if err := sys.Load(ctx, n-loaded, every, payload); err != nil {
				return fmt.Errorf("load to %d: %w", n, err)
			}
			fmt.Fprintf(cfg.log, "peerbench: loaded %d events at %.0f ev/s\n", n-loaded, float64(n-loaded)/time.Since(t0).Seconds())
			loaded = n
			if cfg.workloads["d"] {
				r, err := fastest(ctx, sys, "d-"+short(n), "replay all from the start", cfg, n, sys.ReplayAll)
				if err != nil {
					errs = append(errs, fmt.Errorf("replay %d: %w", n, err))
				} else {
					r.Note = fmt.Sprintf("log %d events; %s", n, r.Note)
					add(r)
				}
			}
		}
		if cfg.workloads["e"] {
			r, err := fastest(ctx, sys, "e", "replay one stream", cfg, targetCount(loaded, every), sys.ReplayStream)
			if err != nil {
				errs = append(errs, fmt.Errorf("replay stream: %w", err))
			} else {
				r.Note = fmt.Sprintf("log %d events; %s", loaded, r.Note)
				add(r)
			}
		}
		if cfg.workloads["g"] && len(cfg.nodes) > 0 {
			data, log, err := diskBytes(cfg.nodes, sys.RaftDir)
			if err != nil {
				return err
			}
			per := float64(len(cfg.nodes)) * float64(loaded)
			r := Result{Workload: "g", Name: "bytes on disk per event", Events: loaded}
			r.SegmentBytesPerEvent = ptr(float64(data+log) / per)
			r.RaftBytesPerEvent = ptr(float64(log) / per)
			r.Note = fmt.Sprintf("per node, after loading %d events of %d B: whole data dir %.1f B/event, of which consensus log %.1f B/event (apparent file sizes, preallocation included)",
				loaded, cfg.size, *r.SegmentBytesPerEvent, *r.RaftBytesPerEvent)
			add(r)
		}
		return nil
	}
	if wantD {
		if err := replays(); err != nil {
			errs = append(errs, err)
		}
	}
	if cfg.workloads["a"] {
		w := waiting(ctx, sys, 1, cfg.duration, payload)
		r := throughput("a", "1 producer, waiting", w.events, cfg.size, w.el).withLatency(w.lats)
		r.Note = errNote(w.errs)
		add(r)
	}
	if cfg.workloads["b"] {
		w := waiting(ctx, sys, cfg.producers, cfg.duration, payload)
		r := throughput("b", fmt.Sprintf("%d producers, waiting", cfg.producers), w.events, cfg.size, w.el).withLatency(w.lats)
		r.Note = errNote(w.errs)
		add(r)
	}
	if cfg.workloads["c"] {
		t0 := time.Now()
		n, lats, how, err := sys.Pipelined(ctx, cfg.duration, cfg.window, payload)
		if err != nil {
			errs = append(errs, fmt.Errorf("pipelined: %w", err))
		} else {
			r := throughput("c", "1 producer, batched+pipelined", n, cfg.size, time.Since(t0)).withLatency(lats)
			r.Note = how
			add(r)
		}
	}
	if cfg.workloads["f"] && len(cfg.nodes) > 0 {
		r, err := failover(ctx, sys, cfg, payload)
		if err != nil {
			errs = append(errs, fmt.Errorf("failover: %w", err))
		} else {
			add(r)
		}
	}
	return res, errors.Join(errs...)
}

// fastest replays want events with each of the system's methods and
// keeps the fastest, naming the others' rates in the note.
func fastest(ctx context.Context, sys system, id, name string, cfg runConfig, want int,
	replay func(context.Context, string, int, func(int)) (string, error)) (Result, error) {
	var best Result
	var others, failed []string
	for _, m := range sys.Methods() {
		var got int
		t0 := time.Now()
		how, err := replay(ctx, m, want, func(int) { got++ })
		el := time.Since(t0)
		if err != nil {
			// One method failing leaves the others to report.
			fmt.Fprintf(cfg.log, "peerbench: %s via %s failed: %v\n", id, m, err)
			failed = append(failed, fmt.Sprintf("%s failed: %v", m, err))
			continue
		}
		r := throughput(id, name, got, cfg.size, el)
		r.Note = how
		fmt.Fprintf(cfg.log, "peerbench: %s via %s: %d events in %.2fs, %.0f ev/s\n", id, how, got, el.Seconds(), r.EventsPS)
		if best.Events == 0 || r.EventsPS > best.EventsPS {
			if best.Events > 0 {
				others = append(others, fmt.Sprintf("%s %.0f ev/s", best.Note, best.EventsPS))
			}
			best = r
		} else {
			others = append(others, fmt.Sprintf("%s %.0f ev/s", how, r.EventsPS))
		}
	}
	if best.Events == 0 {
		return best, fmt.Errorf("every replay method failed: %s", strings.Join(failed, "; "))
	}
	others = append(others, failed...)
	if len(others) > 0 {
		best.Note += " (fastest; also tried: " + strings.Join(others, "; ") + ")"
	}
	return best, nil
}

func errNote(n int) string {
	if n == 0 {
		return ""
	}
	return fmt.Sprintf("%d failed appends retried", n)
}

// short names a log size as in the workload ids: 1000000 -> 1M.
func short(n int) string {
	switch {
	case n%1_000_000 == 0:
		return fmt.Sprintf("%dM", n/1_000_000)
	case n%1000 == 0:
		return fmt.Sprintf("%dk", n/1000)
	}
	return fmt.Sprint(n)
}
