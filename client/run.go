package client

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/tsstore/tsstore/client/train"
	tsstorev1 "github.com/tsstore/tsstore/proto/tsstorev1"
	"github.com/tsstore/tsstore/record"
)

// Training runs. A run is a stream of typed training events (package
// client/train) that has been started with StartRun. The cluster keeps
// snapshots of the run's folded state (every 5,000 BatchCompleted events
// by default), so RunState and ResumeRun read the newest snapshot and
// fold only the run's events after it.
//
// A restarted job attempt does, in this order:
//
//	gen, err := c.StartRun(ctx, "resnet50-7", "attempt 3") // fences older attempts
//	r, err := c.ResumeRun(ctx, "resnet50-7")               // state + where to resume
//	p := c.NewProducer("")
//	p.SetRunGeneration(gen)                                 // appends of attempt 3
//	// load r.Checkpoint's files, continue at step r.NextStep

// StartRun starts (or restarts) a job attempt of run: through Raft, it
// fences the run to a new generation and returns it. From then on appends
// to the run's stream must carry that generation (Producer.
// SetRunGeneration, WithRunGeneration, AsyncOptions.RunGeneration); those
// of any older attempt fail with *FencedError and write nothing, on every
// node. reason is kept in the run's "$fence" event. Retries after an
// ambiguous failure are safe: the call carries an idempotency token, so
// it fences at most once.
func (c *Client) StartRun(ctx context.Context, run, reason string) (generation uint64, err error) {
	var resp *tsstorev1.StartRunResponse
	// One token for every retry of this call: a retry of a fence that
	// committed answers its generation instead of fencing again.
	var tok [12]byte
	_, _ = rand.Read(tok[:]) // never fails on supported platforms
	req := &tsstorev1.StartRunRequest{Run: run, Reason: reason, Token: hex.EncodeToString(tok[:])}
	err = c.call(ctx, func(ctx context.Context, avoid string) (string, error) {
		n, err := c.leaderNode(ctx, avoid)
		if n == nil {
			return "", err
		}
		if err != nil {
			return n.addr, err
		}
		resp, err = tsstorev1.NewRunsClient(n.conn).StartRun(ctx, req)
		return n.addr, err
	})
	if err != nil {
		return 0, fromStatus(err)
	}
	return resp.Generation, nil
}

// RunInfo describes a run as the cluster indexes it.
func (c *Client) RunInfo(ctx context.Context, run string) (*tsstorev1.RunInfo, error) {
	var resp *tsstorev1.RunInfo
	err := c.call(ctx, func(ctx context.Context, _ string) (string, error) {
		n, err := c.pick(false)
		if err != nil {
			return "", err
		}
		resp, err = tsstorev1.NewRunsClient(n.conn).GetRun(ctx, &tsstorev1.GetRunRequest{Run: run, Consistency: tsstorev1.Consistency_CONSISTENCY_LINEARIZABLE})
		return n.addr, err
	})
	return resp, fromStatus(err)
}

// Runs lists the runs whose names start with prefix, in name order.
func (c *Client) Runs(ctx context.Context, prefix string) ([]*tsstorev1.RunInfo, error) {
	var out []*tsstorev1.RunInfo
	after := ""
	for {
		var resp *tsstorev1.ListRunsResponse
		err := c.call(ctx, func(ctx context.Context, _ string) (string, error) {
			n, err := c.pick(false)
			if err != nil {
				return "", err
			}
			resp, err = tsstorev1.NewRunsClient(n.conn).ListRuns(ctx, &tsstorev1.ListRunsRequest{Prefix: prefix, After: after, Consistency: tsstorev1.Consistency_CONSISTENCY_LINEARIZABLE})
			return n.addr, err
		})
		if err != nil {
			return out, fromStatus(err)
		}
		out = append(out, resp.Runs...)
		if resp.NextAfter == "" {
			return out, nil
		}
		after = resp.NextAfter
	}
}

// RunSnapshot is one snapshot of a run's folded state.
type RunSnapshot struct {
	State  *train.State
	Covers uint64 // offset of the last run event folded into it
	Offset uint64 // offset of the snapshot event itself
	Time   time.Time
	Seq    uint64 // 1-based number among the run's snapshots
}

// RunSnapshotAt returns the run's newest snapshot at or before target (of
// this SDK's train.FoldVersion), found in the cluster's index without a
// scan; ok is false if there is none.
func (c *Client) RunSnapshotAt(ctx context.Context, run string, target train.Target) (snap *RunSnapshot, ok bool, err error) {
	return c.runSnapshotAt(ctx, run, target, tsstorev1.Consistency_CONSISTENCY_LINEARIZABLE)
}

func (c *Client) runSnapshotAt(ctx context.Context, run string, target train.Target, cons tsstorev1.Consistency) (snap *RunSnapshot, ok bool, err error) {
	req := &tsstorev1.GetRunSnapshotRequest{Run: run, FoldVersion: train.FoldVersion, Consistency: cons}
	switch kind, n, ns := target.Point(); kind {
	case train.PointOffset:
		req.At = &tsstorev1.GetRunSnapshotRequest_AtOffset{AtOffset: n}
	case train.PointStep:
		req.At = &tsstorev1.GetRunSnapshotRequest_AtStep{AtStep: n}
	case train.PointTime:
		req.At = &tsstorev1.GetRunSnapshotRequest_AtTimeUnixNano{AtTimeUnixNano: ns}
	}
	var resp *tsstorev1.GetRunSnapshotResponse
	err = c.call(ctx, func(ctx context.Context, _ string) (string, error) {
		n, err := c.pick(false)
		if err != nil {
			return "", err
		}
		resp, err = tsstorev1.NewRunsClient(n.conn).GetRunSnapshot(ctx, req)
		return n.addr, err
	})
	if err != nil {
		return nil, false, fromStatus(err)
	}
	if !resp.Found {
		return nil, false, nil
	}
	st, err := train.UnmarshalState(resp.State)
	if err != nil {
		return nil, false, fmt.Errorf("%w: run %q: snapshot at offset %d: %v", ErrCorruption, run, resp.Ref.GetOffset(), err)
	}
	if st.Run != run || st.LastOffset != resp.Ref.GetCovers() || st.Hash != [32]byte(resp.Hash) {
		return nil, false, fmt.Errorf("%w: run %q: snapshot at offset %d does not describe what its index entry says", ErrCorruption, run, resp.Ref.GetOffset())
	}
	return &RunSnapshot{State: st, Covers: resp.Ref.Covers, Offset: resp.Ref.Offset, Time: time.Unix(0, resp.Ref.TimeUnixNano), Seq: resp.Ref.Seq}, true, nil
}

// RunStateInfo says how a run state was computed.
type RunStateInfo struct {
	Snapshot *RunSnapshot // the snapshot folded from; nil: from the run's start
	Folded   uint64       // events folded after it
	Took     time.Duration
}

// RunState returns the run's state at target (the zero Target: now): the
// newest snapshot at or before target, then the run's events after it
// up to target, read like a Replay (linearizable by default; opts may
// make it Local). The same events give the same state and state hash on
// any machine, from a snapshot or from the start.
func (c *Client) RunState(ctx context.Context, run string, target train.Target, opts ...ReadOption) (*train.State, RunStateInfo, error) {
	start := time.Now()
	var info RunStateInfo
	// Any committed snapshot is a correct start, so the lookup need not
	// wait for a read index (one round trip less): the tail read after it
	// is linearizable and folds whatever the snapshot lacks.
	snap, ok, err := c.runSnapshotAt(ctx, run, target, tsstorev1.Consistency_CONSISTENCY_LOCAL)
	if err != nil && !errors.Is(err, ErrCorruption) {
		return nil, info, err
	}
	st := train.NewState(run)
	from := uint64(0)
	if ok {
		// Fold a copy: info.Snapshot keeps describing the snapshot.
		st, info.Snapshot, from = snap.State.Clone(), snap, snap.Covers+1
	}
	if err := c.foldRun(ctx, st, from, target, &info, opts); err != nil {
		return nil, info, err
	}
	info.Took = time.Since(start)
	return st, info, nil
}

// FoldRun folds the run from its first event, without any snapshot: what
// `tsstore run verify` compares the snapshots and the replicas with.
func (c *Client) FoldRun(ctx context.Context, run string, target train.Target, opts ...ReadOption) (*train.State, error) {
	st := train.NewState(run)
	var info RunStateInfo
	return st, c.foldRun(ctx, st, 0, target, &info, opts)
}

func (c *Client) foldRun(ctx context.Context, st *train.State, from uint64, target train.Target, info *RunStateInfo, opts []ReadOption) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	opts = append(opts[:len(opts):len(opts)], Stream(st.Run))
	// Raw batches rather than Replay: the fold needs no RecordedEvent, and
	// a resume folds thousands of records. Payloads alias the receive
	// buffer; Apply keeps none of them.
	types := map[string]string{}
	var r record.Record
	for b, err := range c.ReadBatches(ctx, from, opts...) {
		if errors.Is(err, ErrStreamNotFound) && from == 0 {
			return fmt.Errorf("%w: run %q has no events", ErrStreamNotFound, st.Run)
		}
		if err != nil {
			return err
		}
		ts := b.Header().Timestamp
		it := b.Records()
		for it.Next(&r) {
			if r.Offset < from || string(r.Stream) != st.Run {
				continue
			}
			typ, ok := types[string(r.Type)]
			if !ok {
				typ = string(r.Type)
				types[typ] = typ
			}
			in := train.Input{Offset: r.Offset, Timestamp: ts, Type: typ, Payload: r.Payload}
			beyond, err := target.Beyond(st, in)
			if err != nil {
				return fmt.Errorf("run %q: %w", st.Run, err)
			}
			if beyond {
				return nil
			}
			if err := st.Apply(in); err != nil {
				return fmt.Errorf("run %q: %w", st.Run, err)
			}
			info.Folded++
		}
		if err := it.Err(); err != nil {
			return fmt.Errorf("%w: run %q: %v", ErrCorruption, st.Run, err)
		}
	}
	return nil
}

// RunResume is where a restarted job attempt continues.
type RunResume struct {
	State *train.State
	// Checkpoint is the run's last complete checkpoint (every live rank
	// saved the same step); nil if there is none: start from scratch.
	Checkpoint *train.Checkpoint
	// NextStep is the step to continue at: the one after Checkpoint's.
	NextStep uint64
	Info     RunStateInfo
}

// ResumeRun returns the run's current state and where to resume it, from
// the newest snapshot plus only the run's events after it.
func (c *Client) ResumeRun(ctx context.Context, run string, opts ...ReadOption) (*RunResume, error) {
	st, info, err := c.RunState(ctx, run, train.Target{}, opts...)
	if err != nil {
		return nil, err
	}
	r := &RunResume{State: st, Info: info, Checkpoint: st.LastCheckpoint}
	if r.Checkpoint != nil {
		r.NextStep = r.Checkpoint.Step + 1
	}
	return r, nil
}

// TrainEvent encodes a typed training event (package client/train) as an
// event of run's stream, for Append and the producers.
func TrainEvent(run string, ev train.Event) (Event, error) {
	typ, payload, err := train.Encode(ev)
	if err != nil {
		return Event{}, fmt.Errorf("%w: %v", ErrInvalidEvent, err)
	}
	return Event{Stream: run, Type: typ, Payload: payload}, nil
}
