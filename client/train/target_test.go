package train

import (
	"errors"
	"testing"
	"time"
)

// foldTo folds ins to t from zero and returns the state and how many
// inputs it applied.
func foldTo(tb testing.TB, ins []Input, t Target) (*State, int) {
	tb.Helper()
	s := NewState("r")
	for i, in := range ins {
		beyond, err := t.Beyond(s, in)
		if err != nil {
			tb.Fatalf("Beyond(%v, input %d): %v", t, i, err)
		}
		if beyond {
			return s, i
		}
		if err := s.Apply(in); err != nil {
			tb.Fatal(err)
		}
	}
	return s, len(ins)
}

func TestAtOffsetAndTime(t *testing.T) {
	ins := genRealisticRun(t, 12).ins
	for _, k := range []int{0, 1, 77, len(ins) / 2, len(ins) - 1} {
		for _, o := range []uint64{ins[k].Offset, ins[k].Offset + 1} { // +1 lies in a gap or on the next
			want := k + 1
			if k+1 < len(ins) && ins[k+1].Offset == o {
				want = k + 2
			}
			s, n := foldTo(t, ins, AtOffset(o))
			if n != want || s.Events != uint64(want) || s.LastOffset > o {
				t.Errorf("AtOffset(%d): applied %d, want %d (last offset %d)", o, n, want, s.LastOffset)
			}
		}
		s, n := foldTo(t, ins, AtTime(time.Unix(0, ins[k].Timestamp)))
		if n != k+1 || s.LastTimestamp != ins[k].Timestamp {
			t.Errorf("AtTime(input %d): applied %d, want %d", k, n, k+1)
		}
		if _, n := foldTo(t, ins, AtTime(time.Unix(0, ins[k].Timestamp-1))); n != k {
			t.Errorf("AtTime(just before input %d): applied %d", k, n)
		}
	}
	if s, n := foldTo(t, ins, AtOffset(ins[0].Offset-1)); n != 0 || s.Events != 0 {
		t.Errorf("AtOffset before the first input applied %d", n)
	}
	if _, n := foldTo(t, ins, Target{}); n != len(ins) {
		t.Errorf("the zero Target stopped after %d of %d", n, len(ins))
	}
}

func TestAtStep(t *testing.T) {
	g := newRunGen(t, 13)
	g.add(NodeJoined{Rank: 0})                         // 0: no step
	g.add(BatchCompleted{Rank: 0, Step: 1})            // 1
	g.add(GradientSync{Step: 1})                       // 2
	g.add(BatchCompleted{Rank: 0, Step: 2})            // 3
	g.add(EpochCompleted{Epoch: 0})                    // 4: no step, before the first above 2
	g.raw("User", nil)                                 // 5: idem
	g.add(WeightUpdateApplied{Step: 3})                // 6: the first above 2
	g.add(BatchCompleted{Rank: 1, Step: 2})            // 7: a straggler after it
	g.add(CheckpointSaved{Step: 4, Rank: 0, URI: "u"}) // 8
	for n, want := range map[uint64]int{0: 1, 1: 3, 2: 6, 3: 8, 4: 9, 100: 9} {
		s, got := foldTo(t, g.ins, AtStep(n))
		if got != want || s.MaxStep > n {
			t.Errorf("AtStep(%d): applied %d, want %d (max step %d)", n, got, want, s.MaxStep)
		}
	}
	// After a restart steps recur; AtStep stops the first time the run
	// went past n, in attempt 1.
	run := genRealisticRun(t, 14)
	s, _ := foldTo(t, run.ins, AtStep(65))
	if s.Generation != 1 || s.Step != 65 || s.MaxStep != 65 {
		t.Errorf("AtStep(65) of the restarted run: generation %d step %d", s.Generation, s.Step)
	}
}

func TestBeyondRefuses(t *testing.T) {
	run := genRealisticRun(t, 15)
	end := fold(t, NewState("r"), run.ins)
	next := Input{Offset: end.LastOffset + 1, Timestamp: end.LastTimestamp + 1, Type: "EpochStarted"}
	for _, tg := range []Target{AtOffset(run.ins[3].Offset), AtTime(time.Unix(0, run.ins[3].Timestamp)), AtStep(3)} {
		if _, err := tg.Beyond(end, next); !errors.Is(err, ErrPastTarget) {
			t.Errorf("Beyond(%v) of a state at the end: %v, want ErrPastTarget", tg, err)
		}
	}
	bad := Input{Offset: 1, Type: "BatchCompleted", Payload: []byte{0x92, 2, 0x90}}
	if _, err := AtStep(5).Beyond(NewState("r"), bad); !errors.Is(err, ErrMalformed) {
		t.Errorf("AtStep on a malformed BatchCompleted: %v, want ErrMalformed", err)
	}
	if s := AtStep(5).String() + ", " + AtOffset(7).String() + ", " + AtTime(time.Unix(1, 0)).String() + ", " + (Target{}).String(); s != "step 5, offset 7, time 1970-01-01T00:00:01Z, end" {
		t.Errorf("String: %s", s)
	}
}

func TestStepOf(t *testing.T) {
	stepped := map[string]uint64{"BatchCompleted": 70000, "GradientSync": 70000, "WeightUpdateApplied": 70000,
		"CheckpointSaved": 70000, "HyperparameterChanged": 70001, "TrainingFinished": 90000, "TrainingAborted": 12}
	for _, ev := range builtinSamples() {
		typ, p, _ := Encode(ev)
		step, ok := StepOf(Input{Type: typ, Payload: p})
		if want, has := stepped[typ]; ok != has || step != want {
			t.Errorf("StepOf(%s) = %d %v, want %d %v", typ, step, ok, want, has)
		}
	}
	for _, in := range []Input{{Type: "User", Payload: []byte{0x92, 1, 0x91, 5}}, {Type: "BatchCompleted", Payload: []byte{1}}} {
		if step, ok := StepOf(in); ok {
			t.Errorf("StepOf(%s %x) = %d", in.Type, in.Payload, step)
		}
	}
}

func TestStepsBeforeFirstNaN(t *testing.T) {
	s := NewState("r")
	if _, ok := s.StepsBeforeFirstNaN(300); ok {
		t.Error("a run without NaN has a target before it")
	}
	s.FirstNaN = &NaNAt{Step: 1000}
	if tg, ok := s.StepsBeforeFirstNaN(300); !ok || tg != AtStep(700) {
		t.Errorf("300 before 1000: %v %v", tg, ok)
	}
	if tg, _ := s.StepsBeforeFirstNaN(5000); tg != AtStep(0) {
		t.Errorf("5000 before 1000: %v, want step 0", tg)
	}
}
