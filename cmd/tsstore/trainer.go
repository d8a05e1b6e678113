package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math"
	"time"

	"google.golang.org/grpc/status"

	"github.com/tsstore/tsstore/client"
	"github.com/tsstore/tsstore/client/train"
)

// trainer simulates a data-parallel training job that records its
// progress as typed training events (client/train): the demo that
// `tsstore dev` runs. Attempt 1 starts the run, loses a rank in the
// middle of an epoch (while the cluster loses its leader), and its
// surviving ranks write on as zombies until the orchestrator restarts the
// job: attempt 2 fences the run, sees the zombies refused, resumes from
// the last complete checkpoint, proves the resumed state equals a full
// replay, and trains to the end.
type trainer struct {
	cl      *client.Client
	out     io.Writer
	run     string
	ranks   int
	epochs  int
	steps   int // per epoch
	every   int // steps between checkpoints
	failure func() error

	appended int
}

// The demo's model: bert-base, whose gradients are about 440 MB.
const (
	demoGradBytes = 440 << 20
	demoLR        = 3e-4
)

func (t *trainer) emit(ctx context.Context, p *client.Producer, evs ...train.Event) error {
	out := make([]client.Event, 0, len(evs))
	for _, e := range evs {
		ce, err := client.TrainEvent(t.run, e)
		if err != nil {
			return err
		}
		out = append(out, ce)
	}
	if _, err := p.Append(ctx, out...); err != nil {
		return err
	}
	t.appended += len(evs)
	return nil
}

// failedRank is the rank that fails in attempt 1.
func (t *trainer) failedRank() int { return min(3, t.ranks-1) }

// stepEvents are the events of one optimizer step: a BatchCompleted from
// every live rank, the all-reduce and the update; every t.every steps a
// checkpoint saved by every live rank; the epoch's start and end.
func (t *trainer) stepEvents(step int, live func(rank int) bool) []train.Event {
	epoch, batch := uint64((step-1)/t.steps+1), uint64((step-1)%t.steps+1)
	var evs []train.Event
	if batch == 1 {
		evs = append(evs, train.EpochStarted{Epoch: epoch})
	}
	n := 0
	for r := range t.ranks {
		if !live(r) {
			continue
		}
		n++
		loss := 2.5*math.Exp(-float64(step)/400) + 0.002*float64(r%3)
		evs = append(evs, train.BatchCompleted{Rank: r, Epoch: epoch, Batch: batch, Step: uint64(step), Loss: loss, LearningRate: demoLR, Samples: 32})
	}
	evs = append(evs,
		train.GradientSync{Step: uint64(step), Ranks: n, Bytes: demoGradBytes, Micros: 35000},
		train.WeightUpdateApplied{Step: uint64(step), ParamHash: demoHash("params", step)[:16]})
	if step%t.every == 0 {
		for r := range t.ranks {
			if live(r) {
				evs = append(evs, train.CheckpointSaved{Step: uint64(step), Rank: r,
					URI: fmt.Sprintf("s3://ckpt/%s/step-%d/rank-%d.pt", t.run, step, r), Size: 1<<30 + uint64(step), SHA256: demoHash("ckpt", step)})
			}
		}
	}
	if batch == uint64(t.steps) {
		evs = append(evs, train.EpochCompleted{Epoch: epoch})
	}
	return evs
}

func demoHash(what string, step int) string {
	return fmt.Sprintf("%x", sha256.Sum256(fmt.Appendf(nil, "%s-%d", what, step)))
}

func (t *trainer) train(ctx context.Context) error {
	total := t.epochs * t.steps
	fmt.Fprintf(t.out, "demo trainer: run %s, %d ranks, %d epochs x %d steps, a checkpoint every %d steps\n",
		t.run, t.ranks, t.epochs, t.steps, t.every)
	start := time.Now()
	p1, live, stopStep, err := t.attempt1(ctx, total)
	if err != nil {
		return err
	}
	failed := t.failedRank()
	fmt.Fprintf(t.out, "attempt 1 stopped at step %d; the orchestrator restarts the job with rank %d on a new host\n\n", stopStep, failed)
	gen2, err := t.cl.StartRun(ctx, t.run, fmt.Sprintf("job 1, attempt 2: rank %d failed", failed))
	if err != nil {
		return err
	}
	fmt.Fprintf(t.out, "attempt 2: StartRun -> generation %d (fences attempt 1)\n", gen2)
	if err := t.zombie(ctx, p1, stopStep+1, live); err != nil {
		return err
	}
	r, err := t.resume(ctx)
	if err != nil {
		return err
	}
	if err := t.attempt2(ctx, gen2, int(max(r.NextStep, 1)), total); err != nil {
		return err
	}
	el := time.Since(start)
	fmt.Fprintf(t.out, "attempt 2 finished at step %d: %d events in %v (%.0f events/s, every append acknowledged after a majority fsync)\n",
		total, t.appended, el.Round(time.Millisecond), float64(t.appended)/el.Seconds())
	return nil
}

// attempt1 starts the run and trains until rank failedRank fails in the
// middle of the second epoch (of the first if there is one), between two
// checkpoints; the survivors write a few more steps (stopStep) before the
// job is restarted. It returns the attempt's producer and its live ranks.
func (t *trainer) attempt1(ctx context.Context, total int) (p1 *client.Producer, live func(int) bool, stopStep int, err error) {
	failStep := (min(2, t.epochs)-1)*t.steps + t.steps/2 + t.every/2
	failStep = max(1, min(failStep, total-1))
	stopStep = min(failStep+max(1, t.every/4), total-1)
	gen1, err := t.cl.StartRun(ctx, t.run, "job 1, attempt 1")
	if err != nil {
		return nil, nil, 0, err
	}
	fmt.Fprintf(t.out, "attempt 1: StartRun -> generation %d\n", gen1)
	p1 = t.cl.NewProducer("")
	p1.SetRunGeneration(gen1)
	evs := []train.Event{train.TrainingStarted{Model: "bert-base", ConfigHash: demoHash("config", 1)[:12], WorldSize: t.ranks,
		Hyperparameters: train.Params{"lr": demoLR, "batch_size": float64(32 * t.ranks)}}}
	for r := range t.ranks {
		evs = append(evs, train.NodeJoined{Rank: r, Host: fmt.Sprintf("gpu-%d", r)})
	}
	if err := t.emit(ctx, p1, evs...); err != nil {
		return nil, nil, 0, err
	}
	failed := -1
	live = func(r int) bool { return r != failed }
	for step := 1; step <= stopStep; step++ {
		if step == failStep {
			failed = t.failedRank()
			if err := t.emit(ctx, p1, train.NodeFailed{Rank: failed, Host: fmt.Sprintf("gpu-%d", failed), Reason: "NCCL watchdog timeout"}); err != nil {
				return nil, nil, 0, err
			}
			fmt.Fprintf(t.out, "  !! step %d (epoch %d): rank %d failed (NodeFailed); its %d peers write on\n", step, (step-1)/t.steps+1, failed, t.ranks-1)
			if t.failure != nil {
				if err := t.failure(); err != nil {
					return nil, nil, 0, err
				}
			}
		}
		if err := t.emit(ctx, p1, t.stepEvents(step, live)...); err != nil {
			return nil, nil, 0, err
		}
		if step%t.steps == 0 {
			t.progress(ctx, step)
		}
	}
	return p1, live, stopStep, nil
}

// attempt2 trains from step from to the end with generation gen, the
// failed rank replaced by a new host.
func (t *trainer) attempt2(ctx context.Context, gen uint64, from, total int) error {
	p2 := t.cl.NewProducer("")
	p2.SetRunGeneration(gen)
	var evs []train.Event
	for rk := range t.ranks {
		host := fmt.Sprintf("gpu-%d", rk)
		if rk == t.failedRank() {
			host = fmt.Sprintf("gpu-%d", t.ranks) // the replacement
		}
		evs = append(evs, train.NodeJoined{Rank: rk, Host: host})
	}
	if err := t.emit(ctx, p2, evs...); err != nil {
		return err
	}
	all := func(int) bool { return true }
	for step := from; step <= total; step++ {
		if err := t.emit(ctx, p2, t.stepEvents(step, all)...); err != nil {
			return err
		}
		if step%t.steps == 0 {
			t.progress(ctx, step)
		}
	}
	return t.emit(ctx, p2, train.TrainingFinished{Step: uint64(total), Reason: "done"})
}

// progress prints the end of an epoch with the run's snapshot count.
func (t *trainer) progress(ctx context.Context, step int) {
	snaps := "?"
	if info, err := t.cl.RunInfo(ctx, t.run); err == nil {
		snaps = fmt.Sprint(info.SnapshotsTaken)
	}
	fmt.Fprintf(t.out, "  epoch %d done: step %d, loss %.4f, %d events so far, %s run snapshots\n",
		step/t.steps, step, 2.5*math.Exp(-float64(step)/400), t.appended, snaps)
}

// zombie has a surviving rank of attempt 1, which never learnt of the
// restart, append its next step: the run's fence must refuse it.
func (t *trainer) zombie(ctx context.Context, p1 *client.Producer, step int, live func(int) bool) error {
	rank := 0
	evs := t.stepEvents(step, func(r int) bool { return r == rank && live(r) })
	err := t.emit(ctx, p1, evs...)
	var fe *client.FencedError
	if !errors.As(err, &fe) {
		return fmt.Errorf("the zombie append of attempt 1 was not fenced: %v", err)
	}
	code := "?"
	if st, ok := status.FromError(err); ok {
		code = st.Code().String()
	}
	fmt.Fprintf(t.out, "  zombie rank %d of attempt 1 appends step %d: refused, %s/FENCED: %v\n", rank, step, code, fe)
	return nil
}

// resume resumes the run from its newest snapshot plus the tail, and
// proves the state equals a full replay from the first event.
func (t *trainer) resume(ctx context.Context) (*client.RunResume, error) {
	r, err := t.cl.ResumeRun(ctx, t.run)
	if err != nil {
		return nil, err
	}
	from := "the run's first event (no snapshot yet)"
	if s := r.Info.Snapshot; s != nil {
		// (s.State is the resumed state: RunState folds the tail into it.)
		from = fmt.Sprintf("snapshot #%d (covers offset %d)", s.Seq, s.Covers)
	}
	fmt.Fprintf(t.out, "  ResumeRun took %v: from %s + %d tail events\n", r.Info.Took.Round(10*time.Microsecond), from, r.Info.Folded)
	if c := r.Checkpoint; c != nil {
		fmt.Fprintf(t.out, "  last complete checkpoint: step %d (%d files, sha256 %s...); resume at step %d\n", c.Step, len(c.Files), c.Majority[:12], r.NextStep)
	} else {
		fmt.Fprintln(t.out, "  no complete checkpoint: resume at step 1")
	}
	start := time.Now()
	full, err := t.cl.FoldRun(ctx, t.run, train.Target{})
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(t.out, "  resumed state hash    %x (%d events)\n", r.State.Hash, r.State.Events)
	fmt.Fprintf(t.out, "  full replay hash      %x (%d events, folded from zero in %v)\n", full.Hash, full.Events, time.Since(start).Round(10*time.Microsecond))
	a, err := r.State.MarshalBinary()
	if err != nil {
		return nil, err
	}
	b, err := full.MarshalBinary()
	if err != nil {
		return nil, err
	}
	if r.State.Hash != full.Hash || string(a) != string(b) {
		return nil, fmt.Errorf("run %s: the resumed state differs from the full replay", t.run)
	}
	fmt.Fprintln(t.out, "  resumed state == full replay (same hash, same state bytes)")
	return r, nil
}
