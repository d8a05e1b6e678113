package server

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/raft"

	"github.com/tsstore/tsstore/client/train"
	"github.com/tsstore/tsstore/fsm"
	"github.com/tsstore/tsstore/record"
	"github.com/tsstore/tsstore/segment"
)

// Run snapshots (docs/design.md, "Training runs").
//
// The leader folds every run's events with client/train, the same fold
// the SDK uses, and every Config.RunSnapshotBatches BatchCompleted events
// of a run it proposes a "$snapshot" event carrying the folded state. The
// snapshot goes through Raft like any append, so every replica holds the
// same bytes and indexes them (fsm/runs.go); a resume reads the newest
// snapshot and only the run's tail after it.
//
// The fold runs here, off the apply path: it reads the run's committed
// events from the local log through the stream index, so a slow fold
// delays snapshots, never appends. Its cursors are the leader's alone: a
// new leader starts each run's cursor from the newest indexed snapshot
// (or from the run's first event). A run whose events the fold cannot
// take (a newer schema version than this binary knows, a malformed
// payload) stops getting snapshots, with a warning, until leadership
// changes; its events are stored and served as ever, and a resume folds
// them client-side.
//
// The server imports client/train, the one package of the SDK it uses: a
// leaf package (msgpack and the standard library only) that defines the
// training schema and its fold, shared like record/ is.

// runSnapshotPoll bounds how often the snapshotter looks for new events.
const runSnapshotPoll = 50 * time.Millisecond

// runCursor is the leader's fold of one run.
type runCursor struct {
	st        *train.State
	lastSnap  uint64 // st.Batches at the newest snapshot
	lastCover uint64 // Covers of the newest snapshot (0: none)
	stuck     error
}

// snapshotRuns is the snapshotter's goroutine.
func (n *Node) snapshotRuns() {
	every := n.cfg.RunSnapshotBatches
	if every == 0 {
		return
	}
	var (
		term    uint64
		cursors map[string]*runCursor
	)
	for {
		ch := n.proc.Changed()
		t := n.raft.CurrentTerm()
		if n.raft.State() != raft.Leader || n.leaderReady.Load() != t {
			cursors = nil
		} else {
			if cursors == nil || term != t {
				cursors, term = map[string]*runCursor{}, t
			}
			if err := n.snapshotPass(cursors, every); err != nil {
				n.logger.Warn("run snapshots paused", "error", err)
				cursors = nil
			}
		}
		select {
		case <-ch:
		case <-time.After(time.Second):
		case <-n.shutdown:
			return
		}
		select {
		case <-time.After(runSnapshotPoll):
		case <-n.shutdown:
			return
		}
	}
}

// snapshotPass brings every run's cursor to the end of the log, proposing
// snapshots on the way. An error means this node should stop until the
// next term (it is no longer leader, or the log is unreadable).
func (n *Node) snapshotPass(cursors map[string]*runCursor, every uint64) error {
	after := ""
	for {
		runs, more := n.proc.ListRuns("", after, 1000)
		for _, r := range runs {
			c := cursors[r.Name]
			if c == nil {
				var err error
				if c, err = n.newRunCursor(r); err != nil {
					return err
				}
				cursors[r.Name] = c
			}
			if c.stuck != nil || r.Stream.LastOffset <= c.st.LastOffset && c.st.Events > 0 {
				continue
			}
			if err := n.foldRun(r.Name, r.Stream.FirstOffset, c, every); err != nil {
				return err
			}
		}
		if !more || len(runs) == 0 {
			return nil
		}
		after = runs[len(runs)-1].Name
	}
}

// newRunCursor starts a run's fold from its newest snapshot of this fold
// version, or from its first event.
func (n *Node) newRunCursor(r fsm.RunEntry) (*runCursor, error) {
	ref, ok := n.proc.RunSnapshotAt(r.Name, fsm.ByOffset, ^uint64(0), train.FoldVersion)
	if !ok {
		return &runCursor{st: train.NewState(r.Name)}, nil
	}
	snap, err := n.readRunSnapshot(ref.Offset)
	if err != nil {
		return nil, fmt.Errorf("run %q: reading its snapshot at offset %d: %w", r.Name, ref.Offset, err)
	}
	st, err := train.UnmarshalState(snap.State)
	if err != nil {
		// Written by this fold version, so it should decode; fold from the
		// start rather than never snapshot the run again.
		n.logger.Warn("run snapshot does not decode; folding the run from its start", "run", r.Name, "offset", ref.Offset, "error", err)
		return &runCursor{st: train.NewState(r.Name), lastCover: ref.Covers}, nil
	}
	return &runCursor{st: st, lastSnap: st.Batches, lastCover: ref.Covers}, nil
}

// foldRun folds run's events after the cursor and proposes a snapshot at
// every `every` BatchCompleted events. A fresh cursor starts at the run's
// first event (first), not at offset 0: once a retention cut has dropped
// older segments, a read from 0 is refused as compacted even for a run
// that starts above the cut, and every run started after the first cut
// got no snapshot (so run compaction never thinned it: `tsstore bench`
// workload k found it).
func (n *Node) foldRun(run string, first uint64, c *runCursor, every uint64) error {
	from := first
	if c.st.Events > 0 {
		from = c.st.LastOffset + 1
	}
	end := n.proc.NextOffset()
	var buf []byte
	for from < end {
		var (
			next uint64
			err  error
		)
		err = n.proc.WithLog(func(l *segment.Log) error {
			buf, next, err = l.StreamBatches(buf[:0], run, from, 1<<20)
			return err
		})
		if err != nil {
			var comp *segment.OffsetCompactedError
			if errors.As(err, &comp) {
				c.stuck = err
				n.metrics.runSnapshotsStuck.Inc()
				n.logger.Warn("run snapshots stopped for a run whose start is compacted away and which has no snapshot", "run", run, "error", err)
				return nil
			}
			return fmt.Errorf("run %q: reading its events from offset %d: %w", run, from, err)
		}
		for rest := buf; len(rest) > 0; {
			b, tail, err := record.Next(rest)
			if err != nil {
				return fmt.Errorf("run %q: %w", run, err)
			}
			rest = tail
			if err := n.foldBatch(run, c, b, from, every); err != nil || c.stuck != nil {
				return err
			}
		}
		if next <= from {
			break
		}
		from = next
	}
	return nil
}

// foldBatch folds one batch's records of run (at or after from).
func (n *Node) foldBatch(run string, c *runCursor, b record.Batch, from uint64, every uint64) error {
	ts := b.Header().Timestamp
	it := b.Records()
	var r record.Record
	for it.Next(&r) {
		if r.Offset < from || string(r.Stream) != run {
			continue
		}
		batches := c.st.Batches
		if err := c.st.Apply(train.Input{Offset: r.Offset, Timestamp: ts, Type: string(r.Type), Payload: r.Payload}); err != nil {
			c.stuck = err
			n.metrics.runSnapshotsStuck.Inc()
			n.logger.Warn("run snapshots stopped: the fold cannot take an event of the run (its events are stored and served as ever)",
				"run", run, "offset", r.Offset, "type", string(r.Type), "error", err)
			return nil
		}
		if c.st.Batches != batches && c.st.Batches-c.lastSnap >= every && c.st.LastOffset > c.lastCover {
			if err := n.proposeRunSnapshot(run, c); err != nil {
				return err
			}
		}
	}
	return it.Err()
}

// proposeRunSnapshot commits a snapshot of the cursor's state.
func (n *Node) proposeRunSnapshot(run string, c *runCursor) error {
	state, err := c.st.MarshalBinary()
	if err != nil {
		c.stuck = err
		return nil
	}
	h := c.st.Hash
	snap := &fsm.RunSnapshot{
		Run: run, FoldVersion: train.FoldVersion, Generation: c.st.Generation, Covers: c.st.LastOffset,
		Step: c.st.MaxStep, Time: c.st.LastTimestamp, Events: c.st.Events, Batches: c.st.Batches,
		Hash: h[:], State: state,
	}
	payload, err := fsm.EncodeRunSnapshot(snap)
	if err != nil {
		return err
	}
	op := fsm.AppendOp{Events: []fsm.Event{{Stream: fsm.SnapshotStream, Type: fsm.SnapshotType, Payload: payload}}}
	op.EventSum, op.HasEventSum = fsm.SumEvents(op.Events), true
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	go func() {
		select {
		case <-n.shutdown:
			cancel()
		case <-ctx.Done():
		}
	}()
	res, err := n.prop.propose(ctx, op, len(payload)+64)
	if err == nil {
		err = res.Err
	}
	if err != nil {
		return fmt.Errorf("run %q: proposing its snapshot at offset %d: %w", run, snap.Covers, err)
	}
	c.lastSnap, c.lastCover = c.st.Batches, snap.Covers
	n.metrics.runSnapshots.Inc()
	return nil
}
