package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime/pprof"
	"sync"
	"time"

	"github.com/tsstore/tsstore/bench"
	"github.com/tsstore/tsstore/client"
)

// waiting runs a and b: `workers` producers, each appending one event and
// waiting for its acknowledgement before the next.
func (b *benchRun) waiting(ctx context.Context, id, name string, workers int) ([]bench.Result, error) {
	prods := make([]*client.Producer, workers)
	for i := range prods {
		prods[i] = b.cl.NewProducer("")
	}
	// Warm up: connections, leader discovery, one append per producer.
	for i, p := range prods {
		if _, err := p.Append(ctx, b.event(b.streamOf(id, i))); err != nil {
			return nil, err
		}
	}
	stopProfile := b.startProfile(ctx, id)
	cpu0 := b.cpu()
	st := bench.Run{Workers: workers, Duration: b.f.duration, Progress: b.prog, Label: id + ": " + name}.Do(ctx,
		func(ctx context.Context, w int) (int, error) {
			_, err := prods[w].Append(ctx, b.event(b.streamOf(id, w)))
			return 1, err
		})
	stopProfile()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if st.Errors > 0 {
		return nil, fmt.Errorf("%d appends failed, the last with %w", st.Errors, st.LastErr)
	}
	b.lat[id] = &st.Latency
	return []bench.Result{b.appendResult(id, name, st, "latency of one append of one event, acknowledged after a majority fsync; "+b.cpuNote(cpu0, st.Events))}, nil
}

func (b *benchRun) streamOf(id string, w int) string {
	return fmt.Sprintf("run/bench-%s-%s-%d", b.runID, id, w)
}

func (b *benchRun) appendResult(id, name string, st *bench.Stats, note string) bench.Result {
	r := bench.Result{Workload: id, Name: name, Events: st.Events, Seconds: st.Elapsed.Seconds(),
		EventsPS: st.EventsPerSec(), MBPS: st.EventsPerSec() * float64(b.f.size) / 1e6, Note: note}
	r.WithLatency(&st.Latency)
	return r
}

// batching runs c: one AsyncProducer fed one event at a time as fast as
// it takes them, as a trainer's SDK would be; it coalesces them into
// requests and keeps several in flight. Latency is per event, from Send to
// its acknowledgement.
func (b *benchRun) batching(ctx context.Context) ([]bench.Result, error) {
	const id, name = "c", "1 batching producer"
	st, note, err := b.batchingLoad(ctx, id, name)
	if err != nil {
		return nil, err
	}
	b.lat[id] = &st.Latency
	return []bench.Result{b.appendResult(id, name, st, note)}, nil
}

// batchingLoad runs c's producer for --duration on a stream of its own
// (named after id) and returns what it measured and a note on it; x runs
// it beside the hostile clients.
func (b *benchRun) batchingLoad(ctx context.Context, id, name string) (*bench.Stats, string, error) {
	ap, err := b.cl.NewAsyncProducer("", client.AsyncOptions{MaxBatchEvents: b.f.batch, MaxInflight: b.f.inflight})
	if err != nil {
		return nil, "", err
	}
	defer ap.Close(context.Background())
	stream := b.streamOf(id, 0)
	if f, err := ap.Send(ctx, b.event(stream)); err != nil {
		return nil, "", err
	} else if _, err := f.Wait(ctx); err != nil {
		return nil, "", err
	}
	type sent struct {
		f  *client.Pending
		at time.Time
	}
	acks := make(chan sent, 1<<16)
	var window chan struct{} // with --window: one token per unacknowledged event
	if b.f.window > 0 {
		window = make(chan struct{}, b.f.window)
	}
	var hist bench.Histogram
	var events int64
	var ackErr error
	tl := bench.NewTimeline(100 * time.Millisecond)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // acknowledgements arrive in Send order
		defer wg.Done()
		for s := range acks {
			_, err := s.f.Result()
			now := time.Now()
			if window != nil {
				<-window
			}
			if err != nil {
				ackErr = err
				continue
			}
			hist.Record(now.Sub(s.at))
			tl.Add(now, 1)
			events++
		}
	}()
	stopProfile := b.startProfile(ctx, id)
	var count int64
	var countMu sync.Mutex
	stopProgress := b.prog.Track(id+": "+name, b.f.duration, func() int64 {
		countMu.Lock()
		defer countMu.Unlock()
		return count
	})
	cpu0 := b.cpu()
	start := time.Now()
	deadline := start.Add(b.f.duration)
	var sendErr error
	for i := 0; sendErr == nil; i++ {
		if i%256 == 0 && time.Now().After(deadline) {
			break
		}
		if window != nil {
			window <- struct{}{}
		}
		var f *client.Pending
		at := time.Now()
		if f, sendErr = ap.Send(ctx, b.event(stream)); sendErr == nil {
			acks <- sent{f, at}
			if i%1024 == 0 {
				countMu.Lock()
				count = int64(i)
				countMu.Unlock()
			}
		}
	}
	// Events sent before the deadline count, up to their acknowledgement.
	flushErr := ap.Flush(ctx)
	close(acks)
	wg.Wait()
	elapsed := time.Since(start)
	stopProgress()
	stopProfile()
	for _, err := range []error{ctx.Err(), sendErr, flushErr, ackErr} {
		if err != nil {
			return nil, "", err
		}
	}
	st := &bench.Stats{Events: events, Elapsed: elapsed, Timeline: tl}
	st.Latency.Merge(&hist)
	as := ap.Stats()
	note := fmt.Sprintf("latency from Send to acknowledgement of each event; %d requests (%.0f events each), up to %d in flight; %d re-sent (%d sequence gaps, %d unknown outcomes); %s",
		as.Requests, float64(as.Events)/float64(max(as.Requests, 1)), b.f.inflight, as.Resends, as.Gaps, as.Unknown, b.cpuNote(cpu0, events))
	return st, note, nil
}

// startProfile, with --profile, records CPU profiles of every node (over
// its pprof endpoint; the leader's file says so) and of this process for
// one workload. The returned func stops them and writes them.
func (b *benchRun) startProfile(ctx context.Context, id string) (stop func()) {
	if b.f.profile == "" || b.lc == nil {
		return func() {}
	}
	li, err := b.lc.leader(ctx)
	if err != nil {
		fmt.Fprintf(b.log, "bench: profile: %v\n", err)
		return func() {}
	}
	var wg sync.WaitGroup
	for i, node := range b.lc.c.Nodes {
		addr := pprofAddr(node.Logs())
		if addr == "" || !node.Running() {
			continue
		}
		role := "follower"
		if i == li {
			role = "leader"
		}
		secs := max(1, int(b.f.duration.Seconds())-1)
		path := filepath.Join(b.f.profile, fmt.Sprintf("%s-%s-%s.pprof", id, role, node.ID))
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fetchTo(ctx, fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, secs), path); err != nil {
				fmt.Fprintf(b.log, "bench: profile of %s: %v\n", node.ID, err)
				return
			}
			fmt.Fprintf(b.log, "bench: wrote %s\n", path)
		}()
	}
	cpath := filepath.Join(b.f.profile, id+"-client.pprof")
	cf, err := os.Create(cpath)
	if err == nil {
		if err = pprof.StartCPUProfile(cf); err != nil {
			cf.Close()
			cf = nil
		}
	}
	return func() {
		if cf != nil {
			pprof.StopCPUProfile()
			cf.Close()
			fmt.Fprintf(b.log, "bench: wrote %s\n", cpath)
		}
		wg.Wait()
	}
}

func fetchTo(ctx context.Context, url, path string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
