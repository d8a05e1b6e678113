package server

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/tsstore/tsstore/compaction"
	"github.com/tsstore/tsstore/fsm"
	"github.com/tsstore/tsstore/record"
	"github.com/tsstore/tsstore/segment"
)

// Run compaction on the leader (issue #14): finished runs' events that
// their latest run snapshot covers are dropped from the sealed segments
// but for the kept types. The leader plans (compaction.PlanRuns), computes
// each rewrite's size and digest on its own copy (fsm.PlanThin) and
// commits it (fsm.CmdThin); every replica rewrites its copy the same way.

// thinStats reads the FSM's rewrite counters (zero before it is open).
func (n *Node) thinStats() fsm.ThinStats {
	if n.proc == nil {
		return fsm.ThinStats{}
	}
	return n.proc.ThinStats()
}

// rewrite is a segment rewrite planned now, ready to commit.
type rewrite struct {
	thin   compaction.RunThin
	reason string // "deleted stream" or "finished run"
	cmd    fsm.ThinCommand
}

// planRewrites plans the rewrites that deleted streams and, with
// RunCompaction, finished runs want now, each with the command that
// commits it (its size and digest computed on this node's copy).
func (n *Node) planRewrites(now time.Time) ([]rewrite, error) {
	dels, err := n.planDeletes()
	if err != nil {
		return nil, err
	}
	var cands []rewrite
	for _, t := range dels {
		cands = append(cands, rewrite{thin: t, reason: "deleted stream"})
	}
	if n.cfg.RunCompaction {
		runs, err := n.planRuns(now)
		if err != nil {
			return nil, err
		}
		for _, t := range runs {
			cands = append(cands, rewrite{thin: t, reason: "finished run"})
		}
	}
	var out []rewrite
	for _, c := range cands {
		t := c.thin
		key := fmt.Sprintf("%d/%s/%d/%q", t.BaseOffset, t.Stream, t.Upto, t.Keep)
		n.runNoop.Lock()
		noop := n.runNoop.m[key]
		n.runNoop.Unlock()
		if noop {
			continue
		}
		cmd, err := n.proc.PlanThin(fsm.ThinSpec{BaseOffset: t.BaseOffset, Stream: t.Stream, Upto: t.Upto, Keep: t.Keep})
		switch {
		case errors.Is(err, fsm.ErrNothingToThin):
			// Only kept types there: remembered, so that the segment is
			// not read again at every tick.
			n.runNoop.Lock()
			if n.runNoop.m == nil || len(n.runNoop.m) > 1<<16 {
				n.runNoop.m = map[string]bool{}
			}
			n.runNoop.m[key] = true
			n.runNoop.Unlock()
			continue
		case errors.Is(err, fsm.ErrNotReconciled), errors.Is(err, segment.ErrNotSealed):
			continue // nothing to gain, or this node's copy is not done yet: the next tick
		case err != nil:
			// This segment cannot be thinned now (a damaged copy, a
			// rewritten batch over the size limit): the others still can.
			n.logger.Warn("compaction could not plan a segment rewrite", "stream", t.Stream, "base_offset", t.BaseOffset, "error", err)
			continue
		}
		c.cmd = cmd
		out = append(out, c)
	}
	return out, nil
}

// compactRuns commits the rewrites planRewrites wants now and returns how
// many it committed.
func (n *Node) compactRuns(now time.Time) (int, error) {
	plan, err := n.planRewrites(now)
	if err != nil {
		return 0, err
	}
	done := 0
	for _, r := range plan {
		t, cmd := r.thin, r.cmd
		ctx, cancel := context.WithTimeout(context.Background(), n.cfg.CommandTimeout)
		_, err = n.applyCommand(ctx, fsm.CmdThin, &cmd)
		cancel()
		if errors.Is(err, fsm.ErrStalePlan) {
			continue // the segment changed meanwhile: the next tick plans again
		}
		if err != nil {
			return done, err
		}
		done++
		n.metrics.runThins.Inc()
		n.logger.Info("compaction committed a segment rewrite", "stream", t.Stream, "base_offset", t.BaseOffset, "upto", t.Upto, "kept_types", t.Keep, "bytes_after", cmd.Size)
	}
	return done, nil
}

// planDeletes returns the rewrites that drop deleted streams' events from
// the sealed segments that still hold them.
func (n *Node) planDeletes() ([]compaction.RunThin, error) {
	dels := n.proc.DeletedStreams()
	if len(dels) == 0 {
		return nil, nil
	}
	r := n.proc.Retention()
	var out []compaction.RunThin
	err := n.proc.WithLog(func(l *segment.Log) error {
		for _, e := range r.Segments {
			if e.State != fsm.SegmentLocal {
				continue
			}
			var names []string
			for _, d := range dels {
				upto := min(d.Upto, e.NextOffset-1)
				if e.BaseOffset > d.Upto || r.DeletedUpto(e.BaseOffset, d.Stream) >= upto {
					continue
				}
				if names == nil {
					var err error
					if names, err = l.SegmentStreams(e.BaseOffset); err != nil {
						return fmt.Errorf("stream deletion: streams of segment %d: %w", e.BaseOffset, err)
					}
				}
				if slices.Contains(names, d.Stream) {
					out = append(out, compaction.RunThin{BaseOffset: e.BaseOffset, Stream: d.Stream, Upto: upto})
				}
			}
		}
		return nil
	})
	return out, err
}

// planRuns lists the runs and the sealed segments and asks the planner.
func (n *Node) planRuns(now time.Time) ([]compaction.RunThin, error) {
	pol := compaction.RunPolicy{Grace: n.cfg.RunCompactionGrace}
	r := n.proc.Retention()
	var runs []compaction.Run
	after := ""
	for {
		page, more := n.proc.ListRuns("", after, 1000)
		for _, e := range page {
			after = e.Name
			if len(e.Snapshots) == 0 {
				continue
			}
			run := compaction.Run{Stream: e.Name, Covers: e.Snapshots[len(e.Snapshots)-1].Covers, LastTimestamp: e.Stream.LastTimestamp}
			if !run.Finished(pol, now.UnixNano()) {
				// Not idle long enough: finished only if its last event
				// says so.
				typ, err := n.eventType(e.Name, e.Stream.LastOffset)
				if err != nil {
					return nil, err
				}
				run.LastType = typ
			}
			runs = append(runs, run)
		}
		if !more {
			break
		}
	}
	if len(runs) == 0 {
		return nil, nil
	}
	var segs []compaction.Segment
	err := n.proc.WithLog(func(l *segment.Log) error {
		for _, e := range r.Segments {
			if e.State != fsm.SegmentLocal {
				continue
			}
			names, err := l.SegmentStreams(e.BaseOffset)
			if err != nil {
				return fmt.Errorf("run compaction: streams of segment %d: %w", e.BaseOffset, err)
			}
			segs = append(segs, compaction.Segment{BaseOffset: e.BaseOffset, NextOffset: e.NextOffset, Size: e.Size,
				LastTimestamp: e.LastTimestamp, Streams: names})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return compaction.PlanRuns(runs, segs, r.ThinnedUpto, pol, now.UnixNano()), nil
}

// eventType returns the type of stream's event at offset ("" if it is not
// there).
func (n *Node) eventType(stream string, offset uint64) (string, error) {
	var typ string
	err := n.proc.WithLog(func(l *segment.Log) error {
		raw, _, err := l.StreamBatches(nil, stream, offset, 64<<10)
		if errors.Is(err, segment.ErrOffsetCompacted) {
			// A retention cut took the run's newest event: its type is
			// unknown, so the run is not known to be finished (it still
			// is once idle past the grace). Failing here failed every
			// run's plan (tsstore bench k found it).
			return nil
		}
		if err != nil {
			return err
		}
		for len(raw) > 0 {
			b, rest, err := record.Next(raw)
			if err != nil {
				return err
			}
			raw = rest
			it := b.Records()
			var rec record.Record
			for it.Next(&rec) {
				if rec.Offset == offset && string(rec.Stream) == stream {
					typ = string(rec.Type)
					return nil
				}
			}
			if err := it.Err(); err != nil {
				return err
			}
		}
		return nil
	})
	return typ, err
}
