package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/tsstore/tsstore/bench"
	"github.com/tsstore/tsstore/client"
)

// failover runs f: the b load (N waiting producers) while the leader is
// SIGKILLed --failovers times. Each kill is preceded by --duration/2 of
// steady load (at least 2 s); after it the bench waits for the first
// acknowledged append, keeps the load on for another --duration/2,
// restarts the killed node and lets it catch up for 2 s.
//
// Per kill it reports the time from SIGKILL to the first append
// acknowledged after the process is gone (first_ack_ms), and to the start
// of the first 500 ms window whose throughput is back to 90% of the
// second before the kill (recovered_ms); the row carries the medians.
func (b *benchRun) failover(ctx context.Context) ([]bench.Result, error) {
	const id = "f"
	name := fmt.Sprintf("failover, %d producers, waiting", b.f.producers)
	prods := make([]*client.Producer, b.f.producers)
	for i := range prods {
		prods[i] = b.cl.NewProducer("")
	}
	steady := max(2*time.Second, b.f.duration/2)
	var killedAt atomic.Int64 // unix ns of the latest SIGKILL, set once the process is gone; 0 before
	var firstAck atomic.Int64 // unix ns of the first ack after killedAt
	type kill struct {
		node           string
		at             time.Duration // since the timeline's start
		firstAck       time.Duration // since the kill
		leaderAfter    time.Duration // since the kill, new leader seen by polling
		restartedAfter time.Duration
	}
	var kills []kill
	var duringErr error
	rctx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	run := bench.Run{Workers: b.f.producers, Duration: time.Hour, Progress: b.prog, Label: id + ": " + name,
		During: func(ctx context.Context, tl *bench.Timeline) {
			defer stopRun()
			for range b.f.failovers {
				if sleepCtx(ctx, steady) != nil {
					return
				}
				li, err := b.lc.leader(ctx)
				if err != nil {
					duringErr = err
					return
				}
				node := b.lc.c.Nodes[li]
				t0 := time.Now()
				if err := node.Kill(); err != nil {
					duringErr = err
					return
				}
				killedAt.Store(t0.UnixNano())
				k := kill{node: node.ID, at: t0.Sub(tl.Start())}
				b.failMark = append(b.failMark, bench.Marker{At: k.at, Label: "leader SIGKILLed"})
				if _, err := b.lc.leader(ctx); err == nil {
					k.leaderAfter = time.Since(t0)
				}
				for firstAck.Load() < t0.UnixNano() && ctx.Err() == nil {
					time.Sleep(time.Millisecond)
				}
				k.firstAck = time.Duration(firstAck.Load() - t0.UnixNano())
				if sleepCtx(ctx, steady) != nil {
					return
				}
				if err := node.Start(); err != nil {
					duringErr = err
					return
				}
				k.restartedAfter = time.Since(t0)
				b.failMark = append(b.failMark, bench.Marker{At: time.Since(tl.Start()), Label: "killed node restarted", Secondary: true})
				kills = append(kills, k)
				if sleepCtx(ctx, 2*time.Second) != nil {
					return
				}
			}
		}}
	st := run.Do(rctx, func(ctx context.Context, w int) (int, error) {
		_, err := prods[w].Append(ctx, b.event(b.streamOf(id, w)))
		if ka := killedAt.Load(); err == nil && ka != 0 {
			// The first acknowledgement after the latest kill.
			now := time.Now().UnixNano()
			for old := firstAck.Load(); old < ka && !firstAck.CompareAndSwap(old, now); old = firstAck.Load() {
			}
		}
		return 1, err
	})
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if duringErr != nil {
		return nil, duringErr
	}
	if len(kills) == 0 {
		return nil, fmt.Errorf("no kill completed")
	}
	b.failTL = st.Timeline
	var acks, recs []float64
	var notes []string
	rates := st.Timeline.Rates()
	for _, k := range kills {
		rec, ok := recovery(rates, st.Timeline.Width(), k.at)
		acks = append(acks, bench.Ms(k.firstAck))
		recTxt := "not back to 90% within the steady phase"
		if ok {
			recs = append(recs, bench.Ms(rec))
			recTxt = fmt.Sprintf("back after %.0f ms", bench.Ms(rec))
		}
		notes = append(notes, fmt.Sprintf("%s killed: first ack %.0f ms (new leader seen by polling %.0f ms), throughput %s",
			k.node, bench.Ms(k.firstAck), bench.Ms(k.leaderAfter), recTxt))
	}
	r := b.appendResult(id, name, st, "")
	r.Note = fmt.Sprintf("%d kills (SIGKILL of the leader), medians reported; %s; %d appends failed after the client's retries",
		len(kills), strings.Join(notes, "; "), st.Errors)
	r.FirstAckms = bench.F(median(acks))
	if len(recs) > 0 {
		r.Recoveredms = bench.F(median(recs))
	}
	return []bench.Result{r}, nil
}

// recovery returns the time from kill to the start of the first 500 ms
// window after it whose mean rate is at least 90% of the mean rate in the
// second before the kill.
func recovery(rates []float64, width, kill time.Duration) (time.Duration, bool) {
	k := int(kill / width)
	before := rates[max(0, k-int(time.Second/width)):min(k, len(rates))]
	if len(before) == 0 {
		return 0, false
	}
	base := mean(before)
	win := max(1, int(500*time.Millisecond/width))
	for i := k + 1; i+win <= len(rates); i++ {
		if mean(rates[i:i+win]) >= 0.9*base {
			return time.Duration(i)*width - kill, true
		}
	}
	return 0, false
}

func mean(xs []float64) float64 {
	s := 0.0
	for _, x := range xs {
		s += x
	}
	return s / float64(len(xs))
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
