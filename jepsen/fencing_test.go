package jepsen

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/tsstore/tsstore/client/train"
)

func TestRunAndFenceValues(t *testing.T) {
	v := runValue("jepsen/run2", 7, 3, 41)
	if run, w, g, s, ok := parseRunValue(v); !ok || run != "jepsen/run2" || w != 7 || g != 3 || s != 41 {
		t.Errorf("parseRunValue(%q) = %q %d %d %d %v", v, run, w, g, s, ok)
	}
	for _, bad := range []string{"idem0-3", "jepsen/run2 w7 g3", "jepsen/run2 w7 g03 s41", "jepsen/run2 x7 g3 s41"} {
		if _, _, _, _, ok := parseRunValue(bad); ok {
			t.Errorf("parseRunValue(%q) accepted it", bad)
		}
	}
	f := recordValue(false, "jepsen/run2", train.FenceType, train.EncodeFence(12, "orch2 attempt 15"))
	if !isSystemValue(f) {
		t.Errorf("a fence's value %q is not a system value", f)
	}
	if run, g, reason, isFence, ok := parseFenceValue(f); !isFence || !ok || run != "jepsen/run2" || g != 12 || reason != "orch2 attempt 15" {
		t.Errorf("parseFenceValue(%q) = %q %d %q %v %v", f, run, g, reason, isFence, ok)
	}
	if _, _, _, isFence, ok := parseFenceValue(fenceValue("r", []byte("junk"))); !isFence || ok {
		t.Errorf("an undecodable fence parsed: %v %v", isFence, ok)
	}
	if got := recordValue(false, "jepsen/run2", "Appended", []byte(v)); got != v {
		t.Errorf("recordValue of an event = %q, want its payload", got)
	}
	if got := recordValue(true, "", "", []byte("x")); got != controlValue {
		t.Errorf("recordValue of a control record = %q", got)
	}
}

// The fencing scenario runs the fencing workload, its fault kinds are ones
// the nemesis handles, and the short profile's window holds several.
func TestFencingScenario(t *testing.T) {
	ss, err := FindScenarios("fencing")
	if err != nil {
		t.Fatal(err)
	}
	s := ss[0]
	if !s.Fencing {
		t.Fatal("the fencing scenario does not run the fencing workload")
	}
	for _, k := range s.Faults {
		if !slices.Contains([]string{"kill-leader", "pause-leader", "isolate-leader", "isolate-follower-long", "wipe-follower"}, k) {
			t.Errorf("unexpected fault kind %q", k)
		}
	}
	from, to := phases(Profiles["short"].Duration)
	for seed := uint64(1); seed <= 20; seed++ {
		if plan := planFaults(rand.New(rand.NewPCG(seed, 1)), s, from, to); len(plan) < 3 {
			t.Errorf("seed %d: only %d faults in the short profile", seed, len(plan))
		}
	}
}
