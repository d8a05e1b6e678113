package bench

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// Op performs one operation for worker w and returns how many events it
// acknowledged. An error is counted and the worker goes on, unless the
// run's context is done.
type Op func(ctx context.Context, w int) (events int, err error)

// Run describes a closed-loop run: Workers goroutines each call Op in a
// loop, waiting for each to finish, for Duration.
type Run struct {
	Workers  int
	Duration time.Duration
	// Bucket is the timeline bucket width (default 100 ms).
	Bucket time.Duration
	// Progress, if not nil, is updated while the run lasts.
	Progress *Progress
	// Label names the run in progress lines.
	Label string
	// During, if set, is called in its own goroutine once the run has
	// started, with the run's timeline; the run waits for it to return.
	// The failover workload kills the leader from here.
	During func(ctx context.Context, tl *Timeline)
}

// Stats is the outcome of a run.
type Stats struct {
	Events   int64
	Ops      int64
	Errors   int64
	LastErr  error
	Elapsed  time.Duration
	Latency  Histogram // per successful Op
	Timeline *Timeline
}

// EventsPerSec is the acknowledged event rate over the whole run.
func (s *Stats) EventsPerSec() float64 {
	if s.Elapsed <= 0 {
		return 0
	}
	return float64(s.Events) / s.Elapsed.Seconds()
}

// Do runs op until Duration has passed or ctx is done.
func (r Run) Do(ctx context.Context, op Op) *Stats {
	if r.Bucket <= 0 {
		r.Bucket = 100 * time.Millisecond
	}
	st := &Stats{Timeline: NewTimeline(r.Bucket)}
	ctx, cancel := context.WithTimeout(ctx, r.Duration)
	defer cancel()
	var events, ops, errs atomic.Int64
	var mu sync.Mutex
	var wg sync.WaitGroup
	stopProgress := r.Progress.Track(r.Label, r.Duration, func() int64 { return events.Load() })
	defer stopProgress()
	start := st.Timeline.Start()
	if r.During != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.During(ctx, st.Timeline)
		}()
	}
	for w := range max(r.Workers, 1) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var h Histogram
			for ctx.Err() == nil {
				t0 := time.Now()
				n, err := op(ctx, w)
				t1 := time.Now()
				if err != nil {
					if ctx.Err() == nil {
						errs.Add(1)
						mu.Lock()
						st.LastErr = err
						mu.Unlock()
					}
					continue
				}
				h.Record(t1.Sub(t0))
				st.Timeline.Add(t1, n)
				events.Add(int64(n))
				ops.Add(1)
			}
			mu.Lock()
			st.Latency.Merge(&h)
			mu.Unlock()
		}()
	}
	wg.Wait()
	st.Elapsed = time.Since(start)
	st.Events, st.Ops, st.Errors = events.Load(), ops.Load(), errs.Load()
	return st
}
