package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/tsstore/tsstore/bench"
	"github.com/tsstore/tsstore/client"
)

// replayState is the log d and e load and replay.
type replayState struct {
	target string // the stream e replays
	every  int    // one load request in every `every` goes to target
	loaded int    // events in the log (all workloads'), as far as known
	atEnd  bool   // target was appended after the log, not spread through it
}

// replays runs d: for each --events size, load the log up to it and
// replay it all from offset 0 with one client.
func (b *benchRun) replays(ctx context.Context) ([]bench.Result, error) {
	var out []bench.Result
	for _, n := range b.f.events {
		if err := b.loadTo(ctx, n); err != nil {
			return nil, err
		}
		all := func(ctx context.Context, yield func(int)) error { return b.replayAll(ctx, uint64(n), yield) }
		r, err := b.measure(ctx, "d-"+countName(n), fmt.Sprintf("replay %s events from offset 0", countName(n)), all)
		if err != nil {
			return nil, err
		}
		r.Note = fmt.Sprintf("offsets [0, %d) of a %d-event log; every event decoded and copied by the SDK", n, b.replay.loaded)
		out = append(out, r)
	}
	return out, nil
}

// streamReplay runs e: replay the one target stream inside the largest
// log, through the per-stream index and, for comparison, by a scan with a
// prefix filter.
func (b *benchRun) streamReplay(ctx context.Context) ([]bench.Result, error) {
	n := b.f.events[len(b.f.events)-1]
	if err := b.loadTo(ctx, n); err != nil {
		return nil, err
	}
	if b.replay.target == "" {
		// The log was already that large (a running cluster, or a, b and c
		// wrote it): append the stream at its end instead.
		if err := b.appendTarget(ctx); err != nil {
			return nil, err
		}
	}
	idx, err := b.measure(ctx, "e", fmt.Sprintf("replay one stream inside %s", countName(n)), b.replayStream)
	if err != nil {
		return nil, err
	}
	scan, err := b.measure(ctx, "e-scan", "same stream, full scan + filter", b.replayStreamByScan)
	if err != nil {
		return nil, err
	}
	where := "interleaved in"
	if b.replay.atEnd {
		where = "appended at the end of"
	}
	idx.Note = fmt.Sprintf("stream of %d events %s a %d-event log, read through the per-stream index; cost follows the stream, not the log", idx.Events, where, b.replay.loaded)
	scan.Note = "the same stream selected by a stream-name prefix filter, which the server serves by reading the whole log"
	return []bench.Result{idx, scan}, nil
}

// countName is 1000000 -> "1M", 100000 -> "100k".
func countName(n int) string {
	switch {
	case n >= 1e6 && n%1e6 == 0:
		return fmt.Sprintf("%dM", n/1e6)
	case n >= 1e3 && n%1e3 == 0:
		return fmt.Sprintf("%dk", n/1e3)
	}
	return fmt.Sprint(n)
}

// loadTo appends events until the log holds n (counting other workloads'), from 4
// producers sending requests of replayChunk events of one stream each, as
// trainers do: one request in every `every` belongs to the target
// stream, the others to 64 other streams. Group commit mixes the
// producers' requests into shared Raft entries.
func (b *benchRun) loadTo(ctx context.Context, n int) error {
	rs := &b.replay
	if n <= rs.loaded {
		return nil
	}
	st, err := b.cl.Status(ctx)
	if err != nil {
		return err
	}
	if rs.loaded = int(st.GetNextOffset()); n <= rs.loaded {
		return nil
	}
	if rs.target == "" {
		// Spread the target stream's --stream-events evenly over what is
		// still to load up to the largest size.
		toLoad := max(1, b.f.events[len(b.f.events)-1]-rs.loaded)
		rs.every = max(1, toLoad/replayChunk/max(1, b.f.streamEvents/replayChunk))
		rs.target = fmt.Sprintf("run/bench-%s-target", b.runID)
	}
	start := time.Now()
	const producers = 4
	var mu sync.Mutex
	next := rs.loaded
	var wg sync.WaitGroup
	errs := make(chan error, producers)
	var done int64
	stop := b.prog.Track(fmt.Sprintf("loading %s events", countName(n)), 0, func() int64 {
		mu.Lock()
		defer mu.Unlock()
		return done
	})
	for range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := b.cl.NewProducer("")
			for {
				mu.Lock()
				lo := next
				hi := min(n, lo+replayChunk)
				next = hi
				mu.Unlock()
				if lo >= n {
					return
				}
				chunk := lo / replayChunk
				stream := fmt.Sprintf("run/bench-%s-%d", b.runID, chunk%64)
				if chunk%rs.every == 0 {
					stream = rs.target
				}
				evs := make([]client.Event, hi-lo)
				for i := range evs {
					evs[i] = b.event(stream)
				}
				if _, err := p.Append(ctx, evs...); err != nil {
					errs <- err
					return
				}
				mu.Lock()
				done += int64(hi - lo)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	stop()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	added := n - rs.loaded
	rs.loaded = n
	fmt.Fprintf(b.log, "bench: loaded %d events (%d appended at %.0f events/s)\n", n, added, float64(added)/time.Since(start).Seconds())
	return nil
}

// appendTarget appends --stream-events events of a new target stream,
// in requests of replayChunk events.
func (b *benchRun) appendTarget(ctx context.Context) error {
	rs := &b.replay
	rs.target = fmt.Sprintf("run/bench-%s-target", b.runID)
	p := b.cl.NewProducer("")
	for left := b.f.streamEvents; left > 0; left -= replayChunk {
		evs := make([]client.Event, min(left, replayChunk))
		for i := range evs {
			evs[i] = b.event(rs.target)
		}
		if _, err := p.Append(ctx, evs...); err != nil {
			return err
		}
	}
	rs.loaded += b.f.streamEvents
	rs.atEnd = true
	return nil
}

// replayChunk is the events per append request while loading.
const replayChunk = 200

func (b *benchRun) measure(ctx context.Context, id, name string, replay func(context.Context, func(payloadLen int)) error) (bench.Result, error) {
	var events, bytes int64
	stop := b.prog.Track(id+": "+name, 0, func() int64 { return 0 })
	start := time.Now()
	err := replay(ctx, func(n int) { events++; bytes += int64(n) })
	el := time.Since(start).Seconds()
	stop()
	return bench.Result{Workload: id, Name: name, Events: events, Seconds: el, EventsPS: float64(events) / el,
		MBPS: float64(bytes) / el / 1e6}, err
}

func (b *benchRun) replayAll(ctx context.Context, to uint64, yield func(int)) error {
	for ev, err := range b.cl.Replay(ctx, 0, client.To(to)) {
		if err != nil {
			return err
		}
		yield(len(ev.Payload))
	}
	return nil
}

func (b *benchRun) replayStream(ctx context.Context, yield func(int)) error {
	for ev, err := range b.cl.Replay(ctx, 0, client.Stream(b.replay.target)) {
		if err != nil {
			return err
		}
		yield(len(ev.Payload))
	}
	return nil
}

// replayStreamByScan selects the same events with a prefix filter, which
// the server can only serve by reading the whole log.
func (b *benchRun) replayStreamByScan(ctx context.Context, yield func(int)) error {
	for ev, err := range b.cl.Replay(ctx, 0, client.StreamPrefix(b.replay.target)) {
		if err != nil {
			return err
		}
		yield(len(ev.Payload))
	}
	return nil
}
