package compaction

import (
	"slices"
	"time"
)

// Run compaction: once a run is finished, the events of its stream that
// its latest run snapshot covers are dropped from the sealed segments,
// but for the types the policy keeps. The leader plans (PlanRuns), the
// FSM commits each segment's rewrite (fsm.ThinCommand) and every replica
// rewrites its copy the same way.

// DefaultKeep are the event types run compaction keeps by default: the
// run's milestones (client/train) and the records the run index needs
// ("$fence"; "$snapshot" records live in "$snapshots", which run
// compaction never touches).
var DefaultKeep = []string{"CheckpointSaved", "NodeFailed", "TrainingStarted", "TrainingFinished", "TrainingAborted", "$fence", "$snapshot"}

// FinishTypes are the event types that end a run.
var FinishTypes = []string{"TrainingFinished", "TrainingAborted"}

// DefaultRunGrace is how long a run without a finishing event must be
// idle before it counts as finished.
const DefaultRunGrace = 7 * 24 * time.Hour

// RunPolicy is what run compaction keeps and when it starts.
type RunPolicy struct {
	Keep  []string      // types kept (DefaultKeep if nil)
	Grace time.Duration // idle time after which a run counts as finished (DefaultRunGrace if 0)
}

// Run is what the planner knows of one run.
type Run struct {
	Stream        string
	Covers        uint64 // offset of the last run event its latest snapshot folded; 0: no snapshot
	LastType      string // type of the stream's last event
	LastTimestamp int64  // unix nanoseconds of the stream's last event
}

// Finished reports whether the run is over under pol at now: its last
// event finishes it, or it has been idle for the grace period.
func (r Run) Finished(pol RunPolicy, now int64) bool {
	grace := pol.Grace
	if grace == 0 {
		grace = DefaultRunGrace
	}
	return slices.Contains(FinishTypes, r.LastType) || now-r.LastTimestamp >= int64(grace)
}

// RunThin is one planned rewrite: drop Stream's events up to Upto from
// the segment at BaseOffset, but the kept types.
type RunThin struct {
	BaseOffset uint64
	Stream     string
	Upto       uint64
	Keep       []string
}

// PlanRuns returns the rewrites run compaction wants now: for every
// finished run with a snapshot, each sealed segment (segs, oldest first)
// that holds the run's stream below its snapshot's coverage and has not
// been thinned that far for it yet. thinned returns how far a segment was
// thinned for a stream already (0: not at all).
func PlanRuns(runs []Run, segs []Segment, thinned func(base uint64, stream string) uint64, pol RunPolicy, now int64) []RunThin {
	keep := pol.Keep
	if keep == nil {
		keep = DefaultKeep
	}
	var out []RunThin
	for _, r := range runs {
		if r.Covers == 0 || !r.Finished(pol, now) {
			continue
		}
		for _, s := range segs {
			if s.BaseOffset > r.Covers {
				break
			}
			if !slices.Contains(s.Streams, r.Stream) {
				continue
			}
			upto := min(r.Covers, s.NextOffset-1)
			if thinned(s.BaseOffset, r.Stream) >= upto {
				continue
			}
			out = append(out, RunThin{BaseOffset: s.BaseOffset, Stream: r.Stream, Upto: upto, Keep: keep})
		}
	}
	return out
}
