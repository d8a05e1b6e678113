package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/tsstore/tsstore/bench"
	"github.com/tsstore/tsstore/client"
	"github.com/tsstore/tsstore/client/train"
)

// The r workload: a typed training run shaped like the ResNet-50 case of
// issue #12 (8 ranks; every step each rank sends BatchCompleted,
// GradientSync and WeightUpdateApplied, so 24 events a step and 12,000
// per rank per epoch of 4,000 steps; every rank saves a checkpoint every
// 1,000 steps). For each --events size the run is loaded to that many
// events (cumulatively), the leader's run snapshots are waited for, and
// then it measures:
//   - resume: ResumeRun, the newest snapshot plus the tail, benchRunOps times;
//   - time travel: RunState at a random step, benchRunOps times;
//   - the naive way: one fold of the whole run from offset 0 (FoldRun).
const (
	benchRunRanks     = 8
	benchRunSteps     = 4000 // per epoch
	benchRunCkptEvery = 1000 // steps
	benchRunOps       = 200
)

type trainBench struct {
	name   string
	gen    uint64
	step   uint64 // last step written
	events int    // events written
}

func (b *benchRun) runs(ctx context.Context) ([]bench.Result, error) {
	rb := &trainBench{name: "bench-run-" + b.runID}
	gen, err := b.cl.StartRun(ctx, rb.name, "tsstore bench r")
	if err != nil {
		return nil, err
	}
	rb.gen = gen
	var out []bench.Result
	for _, n := range b.f.events {
		if err := b.loadRun(ctx, rb, n); err != nil {
			return nil, err
		}
		if err := b.waitRunSnapshots(ctx, rb); err != nil {
			return nil, err
		}
		res, err := b.measureRun(ctx, rb)
		if err != nil {
			return nil, err
		}
		out = append(out, res...)
	}
	return out, nil
}

// stepEvents are one step's 24 events, plus the checkpoints when due.
func (rb *trainBench) stepEvents(step uint64) []client.Event {
	epoch := (step-1)/benchRunSteps + 1
	var evs []train.Event
	if (step-1)%benchRunSteps == 0 {
		evs = append(evs, train.EpochStarted{Epoch: epoch})
	}
	for r := range benchRunRanks {
		evs = append(evs,
			train.BatchCompleted{Rank: r, Epoch: epoch, Batch: (step-1)%benchRunSteps + 1, Step: step,
				Loss: 2 / (1 + float64(step)/1e4), LearningRate: 0.1, Samples: 256},
			train.GradientSync{Step: step, Ranks: benchRunRanks, Bytes: 100 << 20, Micros: 1800},
			train.WeightUpdateApplied{Step: step, ParamHash: "p"})
	}
	if step%benchRunCkptEvery == 0 {
		for r := range benchRunRanks {
			evs = append(evs, train.CheckpointSaved{Step: step, Rank: r, URI: fmt.Sprintf("s3://ckpt/%d/%d.pt", step, r), Size: 98 << 20, SHA256: fmt.Sprintf("%064x", step)})
		}
	}
	out := make([]client.Event, len(evs))
	for i, e := range evs {
		ce, err := client.TrainEvent(rb.name, e)
		if err != nil {
			panic(err) // the bench's own events always encode
		}
		out[i] = ce
	}
	return out
}

// loadRun appends whole steps until the run holds at least n events.
func (b *benchRun) loadRun(ctx context.Context, rb *trainBench, n int) error {
	if rb.events >= n {
		return nil
	}
	opts := client.DefaultAsyncOptions()
	opts.RunGeneration = rb.gen
	p, err := b.cl.NewAsyncProducer("", opts)
	if err != nil {
		return err
	}
	start := time.Now()
	var done atomic.Int64
	done.Store(int64(rb.events))
	stop := b.prog.Track(fmt.Sprintf("loading the run to %s events", countName(n)), 0, done.Load)
	if rb.step == 0 {
		joined := []client.Event{}
		for _, e := range []train.Event{train.TrainingStarted{Model: "resnet50", ConfigHash: "c0ffee", WorldSize: benchRunRanks, Hyperparameters: train.Params{"lr": 0.1}}} {
			ce, _ := client.TrainEvent(rb.name, e)
			joined = append(joined, ce)
		}
		for r := range benchRunRanks {
			ce, _ := client.TrainEvent(rb.name, train.NodeJoined{Rank: r, Host: fmt.Sprintf("gpu%02d", r)})
			joined = append(joined, ce)
		}
		if _, err := p.Send(ctx, joined...); err != nil {
			stop()
			return err
		}
		rb.events += len(joined)
	}
	for rb.events < n && err == nil {
		rb.step++
		evs := rb.stepEvents(rb.step)
		_, err = p.Send(ctx, evs...)
		rb.events += len(evs)
		done.Store(int64(rb.events))
	}
	if err == nil {
		err = p.Close(ctx)
	}
	stop()
	if err != nil {
		return err
	}
	fmt.Fprintf(b.log, "bench: r: run loaded to %d events (step %d) in %v\n", rb.events, rb.step, time.Since(start).Round(time.Millisecond))
	return nil
}

// waitRunSnapshots waits until the leader has snapshotted the run as far
// as its snapshot interval allows.
func (b *benchRun) waitRunSnapshots(ctx context.Context, rb *trainBench) error {
	start := time.Now()
	batches := rb.step * benchRunRanks
	var last uint64
	for {
		info, err := b.cl.RunInfo(ctx, rb.name)
		if err != nil {
			return err
		}
		n := len(info.Snapshots)
		if n > 0 {
			last = info.Snapshots[n-1].Batches
		}
		// The snapshotter cuts every run-snapshot-batches BatchCompleted:
		// done once fewer than one interval's worth follow the newest.
		if n > 0 && batches-last < last/info.SnapshotsTaken {
			fmt.Fprintf(b.log, "bench: r: %d run snapshots, the newest after %d of %d batches (waited %v)\n",
				info.SnapshotsTaken, last, batches, time.Since(start).Round(time.Millisecond))
			return nil
		}
		if time.Since(start) > 10*time.Minute {
			return fmt.Errorf("run snapshots reach %d of %d batches after 10 minutes", last, batches)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (b *benchRun) measureRun(ctx context.Context, rb *trainBench) ([]bench.Result, error) {
	size := countName(rb.events)
	var resume, travel bench.Histogram
	var folded, travelFolded uint64
	var want [32]byte
	for i := range benchRunOps {
		r, err := b.cl.ResumeRun(ctx, rb.name)
		if err != nil {
			return nil, err
		}
		resume.Record(r.Info.Took)
		folded += r.Info.Folded
		if i == 0 {
			want = r.State.Hash
		} else if r.State.Hash != want {
			return nil, fmt.Errorf("resume %d gave state hash %x, the first %x", i, r.State.Hash[:8], want[:8])
		}
	}
	rnd := rand.New(rand.NewPCG(uint64(rb.events), 7))
	for range benchRunOps {
		step := 1 + rnd.Uint64N(rb.step)
		_, info, err := b.cl.RunState(ctx, rb.name, train.AtStep(step))
		if err != nil {
			return nil, err
		}
		travel.Record(info.Took)
		travelFolded += info.Folded
	}
	start := time.Now()
	full, err := b.cl.FoldRun(ctx, rb.name, train.Target{})
	if err != nil {
		return nil, err
	}
	naive := time.Since(start)
	if full.Hash != want {
		return nil, fmt.Errorf("the full fold's state hash %x differs from the resume's %x", full.Hash[:8], want[:8])
	}
	r1 := bench.Result{Workload: "r-resume-" + size, Name: fmt.Sprintf("resume a %s-event run", size), Events: int64(rb.events)}
	r1.WithLatency(&resume)
	r1.Note = fmt.Sprintf("ResumeRun x%d: newest run snapshot + the tail (%.0f events folded on average); a fold of the whole run from offset 0 took %.0f ms (%.0f events/s), same state hash",
		benchRunOps, float64(folded)/benchRunOps, bench.Ms(naive), float64(rb.events)/naive.Seconds())
	r2 := bench.Result{Workload: "r-travel-" + size, Name: fmt.Sprintf("state at a random step of a %s-event run", size), Events: int64(rb.events)}
	r2.WithLatency(&travel)
	r2.Note = fmt.Sprintf("RunState(AtStep(random step)) x%d: snapshot at or before the step + fold to it (%.0f events folded on average)",
		benchRunOps, float64(travelFolded)/benchRunOps)
	return []bench.Result{r1, r2}, nil
}
