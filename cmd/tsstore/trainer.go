package main

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"time"

	"github.com/tsstore/tsstore/client"
	"github.com/tsstore/tsstore/internal/proccluster"
)

// trainer simulates a data-parallel training run that records its
// progress as events: the demo that `tsstore dev` runs.
type trainer struct {
	cl         *client.Client
	out        io.Writer
	run        string
	epochs     int
	batches    int
	afterEpoch func(epoch int) error

	first, last uint64
	appended    int
}

func (t *trainer) emit(ctx context.Context, p *client.Producer, events ...client.Event) error {
	res, err := p.Append(ctx, events...)
	if err != nil {
		return err
	}
	if t.appended == 0 {
		t.first = res.FirstOffset
	}
	t.last = res.LastOffset
	t.appended += len(events)
	return nil
}

func (t *trainer) event(typ string, v any) client.Event {
	b, _ := json.Marshal(v)
	return client.Event{Stream: t.run, Type: typ, Payload: b}
}

func (t *trainer) train(ctx context.Context) error {
	p := t.cl.NewProducer("")
	fmt.Fprintf(t.out, "demo trainer: %s, %d epochs x %d batches\n", t.run, t.epochs, t.batches)
	start := time.Now()
	if err := t.emit(ctx, p, t.event("TrainingStarted", map[string]any{"model": "bert-base", "ranks": 4, "lr": 3e-4})); err != nil {
		return err
	}
	for epoch := 1; epoch <= t.epochs; epoch++ {
		if err := t.emit(ctx, p, t.event("EpochStarted", map[string]any{"epoch": epoch})); err != nil {
			return err
		}
		// Batches are appended 10 at a time, each group atomically.
		for b := 1; b <= t.batches; b += 10 {
			var evs []client.Event
			for i := b; i < b+10 && i <= t.batches; i++ {
				step := (epoch-1)*t.batches + i
				evs = append(evs, t.event("BatchCompleted", map[string]any{
					"epoch": epoch, "batch": i, "loss": 2.5 * math.Exp(-float64(step)/400)}))
			}
			evs = append(evs, t.event("GradientSync", map[string]any{"epoch": epoch, "through_batch": min(b+9, t.batches)}))
			if err := t.emit(ctx, p, evs...); err != nil {
				return err
			}
		}
		if err := t.emit(ctx, p,
			t.event("WeightUpdateApplied", map[string]any{"epoch": epoch}),
			t.event("CheckpointSaved", map[string]any{"epoch": epoch, "path": fmt.Sprintf("s3://ckpt/%s/epoch-%d", t.run, epoch)})); err != nil {
			return err
		}
		fmt.Fprintf(t.out, "  epoch %d done: %d events so far, offsets %d..%d\n", epoch, t.appended, t.first, t.last)
		if t.afterEpoch != nil {
			if err := t.afterEpoch(epoch); err != nil {
				return err
			}
		}
	}
	el := time.Since(start)
	fmt.Fprintf(t.out, "appended %d events in %v (%.0f events/s, every append acknowledged after a majority fsync)\n",
		t.appended, el.Round(time.Millisecond), float64(t.appended)/el.Seconds())
	return nil
}

// verifyReplicas replays the run from every node and checks that each
// replay is complete, in order, and byte-for-byte the same.
func (t *trainer) verifyReplicas(ctx context.Context, c *proccluster.Cluster) error {
	fmt.Fprintln(t.out, "\nreplaying the run from each node:")
	var want string
	for _, n := range c.Nodes {
		cfg := client.DefaultConfig()
		cfg.Addrs = []string{n.APIAddr}
		cl, err := client.New(cfg)
		if err != nil {
			return err
		}
		h := sha256.New()
		count, lastEpoch, lastBatch := 0, 0, 0
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		for ev, err := range cl.Replay(rctx, t.first, client.To(t.last+1), client.MinNextOffset(t.last+1)) {
			if err != nil {
				cancel()
				cl.Close()
				return fmt.Errorf("replay from %s: %w", n.ID, err)
			}
			if ev.Stream != t.run {
				continue
			}
			fmt.Fprintf(h, "%d/%s/%s/", ev.Offset, ev.Type, ev.Payload)
			if ev.Type == "BatchCompleted" {
				var b struct{ Epoch, Batch int }
				json.Unmarshal(ev.Payload, &b)
				if b.Epoch < lastEpoch || (b.Epoch == lastEpoch && b.Batch != lastBatch+1) || (b.Epoch > lastEpoch && b.Batch != 1) {
					cancel()
					cl.Close()
					return fmt.Errorf("node %s: batch %d/%d after %d/%d: out of order", n.ID, b.Epoch, b.Batch, lastEpoch, lastBatch)
				}
				lastEpoch, lastBatch = b.Epoch, b.Batch
			}
			count++
		}
		cancel()
		cl.Close()
		sum := fmt.Sprintf("%x", h.Sum(nil))
		fmt.Fprintf(t.out, "  %s: %d events, epochs and batches in order, sha256 %s\n", n.ID, count, sum[:16])
		if count != t.appended {
			return fmt.Errorf("node %s replayed %d events, %d were acknowledged", n.ID, count, t.appended)
		}
		if want != "" && sum != want {
			return fmt.Errorf("node %s diverges from the others", n.ID)
		}
		want = sum
	}
	fmt.Fprintln(t.out, "all replicas identical")
	return nil
}
