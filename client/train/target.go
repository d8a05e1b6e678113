package train

import (
	"fmt"
	"time"
)

// StepOf returns the global step an input carries: the Step of
// BatchCompleted, GradientSync, WeightUpdateApplied, CheckpointSaved,
// HyperparameterChanged, TrainingFinished and TrainingAborted. Other
// types, and payloads that do not decode, have none.
func StepOf(in Input) (uint64, bool) {
	step, ok, err := stepOf(in)
	return step, ok && err == nil
}

// stepOf decodes in only if its type carries a step.
func stepOf(in Input) (uint64, bool, error) {
	switch in.Type {
	case "BatchCompleted", "GradientSync", "WeightUpdateApplied", "CheckpointSaved",
		"HyperparameterChanged", "TrainingFinished", "TrainingAborted":
	default:
		return 0, false, nil
	}
	ev, err := builtins.Decode(in.Type, in.Payload)
	if err != nil {
		return 0, false, err
	}
	step, ok := eventStep(ev)
	return step, ok, nil
}

// A Target is a point of a run to fold to. The zero Target is the end of
// the log: nothing lies beyond it.
type Target struct {
	kind targetKind
	n    uint64 // offset or step
	t    int64  // unix nanoseconds
}

type targetKind uint8

const (
	toEnd targetKind = iota
	toOffset
	toStep
	toTime
)

// AtOffset is the state after every input with Offset <= o.
func AtOffset(o uint64) Target { return Target{kind: toOffset, n: o} }

// AtTime is the state after every input with Timestamp <= t (to the
// nanosecond).
func AtTime(t time.Time) Target { return Target{kind: toTime, t: t.UnixNano()} }

// AtStep is the state after every input up to, not including, the first
// input whose own step (StepOf) is above n: events with a step <= n, and
// events without one that come before it. After a restart from an
// earlier checkpoint a step can recur; the fold stops the first time the
// run went past n.
func AtStep(n uint64) Target { return Target{kind: toStep, n: n} }

// Beyond reports whether in lies beyond t, so that a fold to t must stop
// before applying it (and apply nothing after it: the fold is a prefix of
// the log). s is the state folded so far; if it has already applied
// inputs beyond t, Beyond returns ErrPastTarget (fold from an earlier
// snapshot). For AtStep, a built-in payload that does not decode is an
// error (ErrMalformed or *UnknownVersionError), as it is for Apply.
func (t Target) Beyond(s *State, in Input) (bool, error) {
	switch t.kind {
	case toOffset:
		if s.Events > 0 && s.LastOffset > t.n {
			return false, fmt.Errorf("%w: at offset %d, target %v", ErrPastTarget, s.LastOffset, t)
		}
		return in.Offset > t.n, nil
	case toTime:
		if s.Events > 0 && s.LastTimestamp > t.t {
			return false, fmt.Errorf("%w: at time %d, target %v", ErrPastTarget, s.LastTimestamp, t)
		}
		return in.Timestamp > t.t, nil
	case toStep:
		if s.MaxStep > t.n {
			return false, fmt.Errorf("%w: at step %d, target %v", ErrPastTarget, s.MaxStep, t)
		}
		step, ok, err := stepOf(in)
		if err != nil {
			return false, fmt.Errorf("train: offset %d: %w", in.Offset, err)
		}
		return ok && step > t.n, nil
	}
	return false, nil
}

func (t Target) String() string {
	switch t.kind {
	case toOffset:
		return fmt.Sprintf("offset %d", t.n)
	case toStep:
		return fmt.Sprintf("step %d", t.n)
	case toTime:
		return "time " + time.Unix(0, t.t).UTC().Format(time.RFC3339Nano)
	}
	return "end"
}

// StepsBeforeFirstNaN returns the target n steps before the first NaN or
// Inf loss (AtStep(FirstNaN.Step - n), or step 0 if that is negative):
// fold a run to its end, then fold again to this target to see the run
// as it was, say, 300 batches before it diverged. ok is false if the run
// has no NaN loss.
func (s *State) StepsBeforeFirstNaN(n uint64) (t Target, ok bool) {
	if s.FirstNaN == nil {
		return Target{}, false
	}
	return AtStep(s.FirstNaN.Step - min(n, s.FirstNaN.Step)), true
}

// PointKind says what a Target is compared with.
type PointKind uint8

const (
	PointEnd    PointKind = iota // the end of the log
	PointOffset                  // an offset
	PointStep                    // a step
	PointTime                    // a time, unix nanoseconds
)

// Point returns what t selects: its kind and its offset or step (n) or
// time (ns). A store looks up the newest snapshot at or before it.
func (t Target) Point() (kind PointKind, n uint64, ns int64) {
	switch t.kind {
	case toOffset:
		return PointOffset, t.n, 0
	case toStep:
		return PointStep, t.n, 0
	case toTime:
		return PointTime, 0, t.t
	}
	return PointEnd, 0, 0
}
