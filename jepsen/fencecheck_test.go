package jepsen

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tsstore/tsstore/client/train"
)

// fencingLog builds a history of the fencing workload on top of
// cleanHistory, and the log its replicas hold.
type fencingLog struct {
	h       *History
	values  []string
	streams []string
	t       time.Duration
}

func (b *fencingLog) tick() (invoke, complete time.Duration) {
	b.t += 10 * ms
	return b.t, b.t + 5*ms
}

func (b *fencingLog) fence(run, reason string, gen uint64) {
	b.values = append(b.values, fenceValue(run, train.EncodeFence(gen, reason)))
	b.streams = append(b.streams, run)
}

// startRun records a StartRun op; a gen above 0 is the fence it wrote.
func (b *fencingLog) startRun(run, reason string, out Outcome, gen uint64) {
	op := FenceOp{Process: "orch", Run: run, Reason: reason, Outcome: out}
	op.Invoke, op.Complete = b.tick()
	if out == OK {
		op.Generation = gen
	}
	if gen > 0 {
		b.fence(run, reason, gen)
	}
	b.h.Fences = append(b.h.Fences, op)
}

// write records an append of writer's events seqs to run with generation
// gen; present events are stored at the log's end.
func (b *fencingLog) write(run string, writer int, gen uint64, out Outcome, present bool, seqs ...uint64) *AppendOp {
	op := AppendOp{Process: run + "-w", Idempotent: true, Run: run, Generation: gen, Outcome: out, Attempts: 1}
	op.Invoke, op.Complete = b.tick()
	op.First = uint64(len(b.values))
	for _, s := range seqs {
		v := runValue(run, writer, gen, s)
		op.Values = append(op.Values, v)
		if present {
			b.values = append(b.values, v)
			b.streams = append(b.streams, run)
		}
	}
	if out != OK {
		op.First = 0
	}
	b.h.Appends = append(b.h.Appends, op)
	return &b.h.Appends[len(b.h.Appends)-1]
}

const run0, run1 = "jepsen/run0", "jepsen/run1"

// cleanFencingHistory is cleanHistory plus two fenced runs: run0 goes
// through generations 1 (acknowledged), 2 (a StartRun in doubt that
// committed) and 3 (acknowledged) while writer 1's zombie append is
// refused FENCED; one StartRun fails, one in doubt never committed; an
// in-doubt append of the live writer committed, another did not.
func cleanFencingHistory() (*History, []Replica) {
	h, reps := cleanHistory()
	b := &fencingLog{h: h, values: slices.Clone(reps[0].Values), t: time.Second}
	for range b.values {
		b.streams = append(b.streams, "jepsen/p")
	}
	b.startRun(run0, "orch0 attempt 1", OK, 1)
	b.startRun(run1, "orch1 attempt 1", OK, 1)
	b.write(run0, 1, 1, OK, true, 0)
	b.write(run1, 1, 1, OK, true, 0, 1)
	b.write(run0, 1, 1, OK, true, 1, 2)
	b.startRun(run0, "orch0 attempt 2", Unknown, 2)
	b.startRun(run0, "orch0 attempt 3", OK, 3)
	z := b.write(run0, 1, 1, Fail, false, 3)
	z.Fenced, z.Current, z.Err = true, 3, "run generation fenced"
	b.write(run0, 3, 3, OK, true, 0)
	b.write(run0, 3, 3, Unknown, true, 1)
	b.write(run0, 3, 3, Unknown, false, 2)
	b.startRun(run0, "orch0 attempt 4", Fail, 0)
	b.startRun(run1, "orch1 attempt 2", Unknown, 0)
	b.write(run0, 3, 3, OK, true, 3)
	return h, []Replica{fencingReplica("n1", b.values, b.streams), fencingReplica("n2", b.values, b.streams), fencingReplica("n3", b.values, b.streams)}
}

func fencingReplica(node string, values, streams []string) Replica {
	r := replica(node, values)
	r.Streams = slices.Clone(streams)
	return r
}

// doctor rewrites the replicas' logs (every replica, or only the named
// ones) and recomputes their hashes.
func doctor(reps []Replica, f func(values, streams []string) ([]string, []string), nodes ...string) {
	for i := range reps {
		if len(nodes) > 0 && !slices.Contains(nodes, reps[i].Node) {
			continue
		}
		v, s := f(slices.Clone(reps[i].Values), slices.Clone(reps[i].Streams))
		reps[i] = fencingReplica(reps[i].Node, v, s)
	}
}

// offsetOf is the offset of v in the (clean) log.
func offsetOf(t *testing.T, reps []Replica, v string) int {
	t.Helper()
	i := slices.Index(reps[0].Values, v)
	if i < 0 {
		t.Fatalf("%q is not in the log", v)
	}
	return i
}

// shiftAcks moves the acknowledged offsets at or after at by one, for an
// event inserted at at.
func shiftAcks(h *History, at int) {
	for i := range h.Appends {
		if a := &h.Appends[i]; a.Outcome == OK && a.First >= uint64(at) {
			a.First++
		}
	}
}

func fenceOp(t *testing.T, h *History, reason string) *FenceOp {
	t.Helper()
	for i := range h.Fences {
		if h.Fences[i].Reason == reason {
			return &h.Fences[i]
		}
	}
	t.Fatalf("no StartRun %q", reason)
	return nil
}

// expectFencing is expectOnly that also requires some rule-10 example to
// contain want.
func expectFencing(t *testing.T, h *History, reps []Replica, want string, rules ...int) {
	t.Helper()
	res := expectOnly(t, h, reps, rules...)
	if len(res) != 10 {
		t.Fatalf("%d checkers ran, want 10 (rule 10 with a fencing history)", len(res))
	}
	if want == "" {
		return
	}
	for _, e := range rule(res, 10).Examples {
		if strings.Contains(e, want) {
			return
		}
	}
	t.Errorf("no rule-10 example says %q: %q", want, rule(res, 10).Examples)
}

func TestCleanFencingHistoryPasses(t *testing.T) {
	h, reps := cleanFencingHistory()
	res := expectOnly(t, h, reps)
	r := rule(res, 10)
	for key, want := range map[string]int{
		"fences_n1":                           4, // run0: 1, 2, 3; run1: 1
		"fenced_appends_n1":                   1,
		"startrun_unknown_fences_1_n1":        1, // orch0 attempt 2 committed
		"startrun_unknown_fences_0_n1":        1, // orch1 attempt 2 did not
		"startrun_retry_wrote_more_fences_n1": 0,
	} {
		if got := r.Notes[key]; got != want {
			t.Errorf("rule 10 note %s = %d, want %d; notes %v", key, got, want, r.Notes)
		}
	}
	// Without the fencing workload rule 10 does not run.
	h, reps = cleanHistory()
	if res := Check(h, reps); len(res) != 9 {
		t.Errorf("%d checkers on a history without fences, want 9", len(res))
	}
}

// (1) An append of an older generation after a newer fence; one of a
// generation before its fence; an event no run writer wrote.
func TestFencingCatchesStaleGeneration(t *testing.T) {
	// The zombie's in-doubt append of generation 1 committed after the
	// fence of generation 3.
	h, reps := cleanFencingHistory()
	b := &fencingLog{h: h, t: 2 * time.Second}
	late := b.write(run0, 1, 1, Unknown, false, 9).Values[0]
	doctor(reps, func(v, s []string) ([]string, []string) { return append(v, late), append(s, run0) })
	expectFencing(t, h, reps, "stale generation", 10)

	// Writer 3's in-doubt append committed before the fence of 3.
	h, reps = cleanFencingHistory()
	b = &fencingLog{h: h, t: 2 * time.Second}
	early := b.write(run0, 3, 3, Unknown, false, 9).Values[0]
	at := offsetOf(t, reps, fenceValue(run0, train.EncodeFence(3, "orch0 attempt 3")))
	doctor(reps, func(v, s []string) ([]string, []string) {
		return slices.Insert(v, at, early), slices.Insert(s, at, run0)
	})
	// Shift the acknowledged offsets after it, so that only rule 10 objects.
	shiftAcks(h, at)
	expectFencing(t, h, reps, "carries generation 3, but jepsen/run0 was fenced to generation 2", 10)

	// A value of the main workload in the run's stream.
	h, reps = cleanFencingHistory()
	h.Appends = append(h.Appends, AppendOp{Process: "p9", Idempotent: true, Values: []string{"p9-0"}, Outcome: Unknown, Invoke: 3 * time.Second})
	doctor(reps, func(v, s []string) ([]string, []string) { return append(v, "p9-0"), append(s, run0) })
	expectFencing(t, h, reps, "which no writer of the run appended", 10)
}

// (3) An append refused FENCED is in the log (rule 4 sees a definitely
// failed append stored, too).
func TestFencingCatchesFencedAppendPresent(t *testing.T) {
	h, reps := cleanFencingHistory()
	zombie := runValue(run0, 1, 1, 3)
	// Stored before the fence of 2, so its generation is not stale there.
	at := offsetOf(t, reps, fenceValue(run0, train.EncodeFence(2, "orch0 attempt 2")))
	doctor(reps, func(v, s []string) ([]string, []string) {
		return slices.Insert(v, at, zombie), slices.Insert(s, at, run0)
	})
	shiftAcks(h, at)
	expectFencing(t, h, reps, "was refused FENCED but is in jepsen/run0's stream", 4, 10)
}

// (4) Fence generations with a gap, or a fence that does not decode.
func TestFencingCatchesFenceGap(t *testing.T) {
	h, reps := cleanFencingHistory()
	at := offsetOf(t, reps, fenceValue(run0, train.EncodeFence(2, "orch0 attempt 2")))
	doctor(reps, func(v, s []string) ([]string, []string) {
		v[at] = fenceValue(run0, train.EncodeFence(4, "orch0 attempt 2"))
		return v, s
	})
	expectFencing(t, h, reps, "is generation 4 after generation 1", 10)

	h, reps = cleanFencingHistory()
	doctor(reps, func(v, s []string) ([]string, []string) {
		v[at] = fenceValue(run0, []byte{0xc1})
		return v, s
	})
	expectFencing(t, h, reps, "does not decode", 10)
}

// (4) StartRun outcomes: an acknowledged generation that is not in the
// stream, a failed StartRun whose fence is, a fence nobody asked for, and
// a later StartRun that got a lower generation.
func TestFencingCatchesStartRunOutcomes(t *testing.T) {
	h, reps := cleanFencingHistory()
	fenceOp(t, h, "orch0 attempt 3").Generation = 5
	expectFencing(t, h, reps, "returned generation 5, but jepsen/run0's stream has [3]", 10)

	h, reps = cleanFencingHistory()
	op := fenceOp(t, h, "orch0 attempt 2")
	op.Outcome, op.Err = Fail, "invalid argument"
	expectFencing(t, h, reps, "failed (invalid argument), but wrote fence(s) [2]", 10)

	h, reps = cleanFencingHistory()
	at := offsetOf(t, reps, fenceValue(run1, train.EncodeFence(1, "orch1 attempt 1")))
	doctor(reps, func(v, s []string) ([]string, []string) {
		v[at] = fenceValue(run1, train.EncodeFence(1, "somebody else"))
		return v, s
	})
	// orch1 attempt 1's generation is gone too.
	expectFencing(t, h, reps, `with reason "somebody else", which no StartRun gave`, 10)

	h, reps = cleanFencingHistory()
	op = fenceOp(t, h, "orch0 attempt 3")
	op.Invoke, op.Complete = 500*ms, 505*ms // acknowledged before attempt 1 (generation 1) was invoked
	expectFencing(t, h, reps, "got generation 1, not above", 10)
}

// A FENCED refusal by a generation that is not newer than the writer's,
// or that never reached the stream.
func TestFencingCatchesSpuriousFenced(t *testing.T) {
	for _, current := range []uint64{1, 9} {
		h, reps := cleanFencingHistory()
		for i := range h.Appends {
			if h.Appends[i].Fenced {
				h.Appends[i].Current = current
			}
		}
		expectFencing(t, h, reps, "spurious FENCED", 10)
	}
}

// (5) One replica's run stream differs (rules 2 and 9 see the whole log
// differ too).
func TestFencingCatchesDivergedRunStream(t *testing.T) {
	h, reps := cleanFencingHistory()
	inDoubt := offsetOf(t, reps, runValue(run0, 3, 3, 1))
	doctor(reps, func(v, s []string) ([]string, []string) {
		v[inDoubt] = runValue(run0, 3, 3, 2) // the other in-doubt append
		return v, s
	}, "n3")
	expectFencing(t, h, reps, "replicas differ on jepsen/run0's stream: n1 vs n3", 2, 9, 10)
}

// (2) An acknowledged append of the live generation lost (rule 1), or
// stored twice (rule 3): the generic checkers judge the run writers'
// appends like any other.
func TestFencingAcknowledgedAppendsUseRules1And3(t *testing.T) {
	h, reps := cleanFencingHistory()
	doctor(reps, func(v, s []string) ([]string, []string) { return v[:len(v)-1], s[:len(s)-1] }, "n2")
	expectFencing(t, h, reps, "replicas differ on jepsen/run0's stream: n1 vs n2: 9 events vs 8", 1, 9, 10)

	h, reps = cleanFencingHistory()
	last := runValue(run0, 3, 3, 3)
	doctor(reps, func(v, s []string) ([]string, []string) { return append(v, last), append(s, run0) })
	expectFencing(t, h, reps, "", 3)
}
