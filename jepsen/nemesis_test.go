package jepsen

import (
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestPlanLeavesRoomForOverhead checks that the planner spaces faults by
// their drawn duration, the scenario's Overhead and a quiet pause, ends
// every one (overhead included) before the window closes, and is a pure
// function of the seed.
func TestPlanLeavesRoomForOverhead(t *testing.T) {
	from, to := 4*time.Second, 29*time.Second
	for _, s := range Scenarios {
		for seed := uint64(1); seed <= 20; seed++ {
			plan := planFaults(rand.New(rand.NewPCG(seed, 1)), s, from, to)
			again := planFaults(rand.New(rand.NewPCG(seed, 1)), s, from, to)
			if !slices.Equal(plan, again) {
				t.Fatalf("%s seed %d: two plans from one seed differ", s.Name, seed)
			}
			if len(plan) == 0 {
				t.Fatalf("%s seed %d: no fault planned in %v..%v", s.Name, seed, from, to)
			}
			if plan[0].At != from {
				t.Errorf("%s seed %d: first fault at %v, want %v", s.Name, seed, plan[0].At, from)
			}
			for i, p := range plan {
				if p.Duration < s.Active[0] || p.Duration > s.Active[1] || !slices.Contains(s.Faults, p.Kind) {
					t.Errorf("%s seed %d: fault %d %+v outside the scenario's kinds or durations", s.Name, seed, i, p)
				}
				if end := p.At + p.Duration + s.Overhead; end > to {
					t.Errorf("%s seed %d: fault %d ends at %v (overhead %v included), after %v", s.Name, seed, i, end, s.Overhead, to)
				}
				if i > 0 {
					prev := plan[i-1]
					if gap := p.At - (prev.At + prev.Duration + s.Overhead); gap < s.Quiet[0] || gap > s.Quiet[1] {
						t.Errorf("%s seed %d: quiet pause before fault %d is %v, want %v..%v", s.Name, seed, i, gap, s.Quiet[0], s.Quiet[1])
					}
				}
			}
		}
	}
}

// TestMembershipScenario pins what the membership scenario needs from the
// planner: every fault kind is one the nemesis handles, and the short
// profile's fault window holds at least two of them.
func TestMembershipScenario(t *testing.T) {
	ss, err := FindScenarios("membership")
	if err != nil {
		t.Fatal(err)
	}
	s := ss[0]
	if s.Overhead <= 0 {
		t.Fatalf("membership has no overhead: %v", s.Overhead)
	}
	for _, k := range s.Faults {
		if !slices.Contains([]string{"remove-follower", "remove-leader", "remove-kill", "kill-leader"}, k) {
			t.Errorf("unknown membership fault kind %q", k)
		}
	}
	from, to := phases(Profiles["short"].Duration)
	for seed := uint64(1); seed <= 20; seed++ {
		if plan := planFaults(rand.New(rand.NewPCG(seed, 1)), s, from, to); len(plan) < 2 {
			t.Errorf("seed %d: only %d faults in the short profile", seed, len(plan))
		}
	}
}

// TestDiskFullScenario pins what the disk-full scenario needs: every
// fault kind is disk-<depth>-<scope> for both depths and every scope the
// nemesis handles, the watermarks fit the filesystem (a low fill leaves
// writes room: raft-wal preallocates 16 MiB files), and the short
// profile's fault window holds at least two faults.
func TestDiskFullScenario(t *testing.T) {
	ss, err := FindScenarios("disk-full")
	if err != nil {
		t.Fatal(err)
	}
	s := ss[0]
	seen := map[string]bool{}
	for _, k := range s.Faults {
		kind, rest, _ := strings.Cut(k, "-")
		depth, scope, _ := strings.Cut(rest, "-")
		if kind != "disk" || !slices.Contains([]string{"low", "full"}, depth) ||
			!slices.Contains([]string{"follower", "leader", "majority", "all", "restart"}, scope) {
			t.Errorf("fault kind %q is not disk-<low|full>-<follower|leader|majority|all|restart>", k)
		}
		seen[depth+"-"+scope] = true
	}
	if len(seen) != 10 {
		t.Errorf("want both depths of all five scopes, have %v", seen)
	}
	d := s.Disk
	if d == nil || d.MinFree-d.LowMargin < 32<<20 || d.MinFree+d.Resume >= d.Size/2 {
		t.Errorf("disk spec %+v: a low fill must leave at least 32 MiB, and healing must free well past the resume mark", d)
	}
	from, to := phases(Profiles["short"].Duration)
	for seed := uint64(1); seed <= 20; seed++ {
		if plan := planFaults(rand.New(rand.NewPCG(seed, 1)), s, from, to); len(plan) < 2 {
			t.Errorf("seed %d: only %d faults in the short profile", seed, len(plan))
		}
	}
}
