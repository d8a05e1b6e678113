package jepsen

import (
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

// retHistory is a small valid retention run: ten acknowledged events on
// jepsen/ streams and one (offset 8) on the keeper's uncovered stream; the
// policy cut the log at 4 (the segment [0, 4) is dropped everywhere, [4,
// 8) sealed and identical on the three nodes); a read and a subscriber's
// resume below the cut were refused OFFSET_COMPACTED naming 4; the final
// probes see the cut on every node.
func retHistory() (*History, []Replica) {
	h := &History{Retention: &RetentionRun{Prefix: "jepsen/", MaxBytes: 1 << 10, Uncovered: "keep/", Version: 1}}
	var L []string
	t := time.Duration(0)
	for i := range 10 {
		op := AppendOp{Process: "p1", Idempotent: true, Values: []string{"p1-" + string(rune('a'+i))},
			Invoke: t, Complete: t + 5*ms, Outcome: OK, First: uint64(i), Attempts: 1}
		if i == 8 {
			op.Process, op.Values, op.Stream = "keep0", []string{"keep0-0"}, "keep/keep0"
		}
		h.Appends = append(h.Appends, op)
		L = append(L, op.Values[0])
		t += 10 * ms
	}
	h.Reads = []ReadOp{
		{Process: "r-lin", From: 0, Linearizable: true, Invoke: t, Complete: t + ms, Outcome: OK, Values: slices.Clone(L)},
		{Process: "replay0", From: 0, To: 10, Invoke: t + 10*ms, Complete: t + 11*ms, Outcome: Fail,
			Err: "tsstore: offset compacted: first stored offset is 4", Compacted: true, FirstKept: 4},
		{Process: "replay0", From: 4, To: 10, Invoke: t + 12*ms, Complete: t + 13*ms, Outcome: OK, Values: slices.Clone(L[4:])},
	}
	h.Cuts = []CutObs{{At: 5 * ms, Node: "n1", First: 0}, {At: 50 * ms, Node: "n1", First: 4}, {At: 60 * ms, Node: "n2", First: 4}}
	h.Faults = []Fault{{Kind: "kill-leader", Target: "n2", Start: 40 * ms, End: 70 * ms}}
	sub := Subscription{Process: "s1", Start: 1, Jumps: []Jump{{From: 1, To: 4}}, Resumes: []uint64{4}}
	for off := 4; off < len(L); off++ {
		sub.Deliveries = append(sub.Deliveries, Delivery{uint64(off), L[off]})
	}
	h.Subs = []Subscription{sub}
	stored := slices.Clone(L)
	for i := range 4 {
		stored[i] = compactedValue
	}
	var reps []Replica
	for _, n := range []string{"n1", "n2", "n3"} {
		rep := replica(n, stored)
		rep.First = 4
		rep.Retention = &ReplicaRetention{First: 4, DigestFirst: 4,
			Manifest: []SegmentRecord{{Base: 0, Next: 4, Size: 400, Digest: 0xaa, State: "dropped"}, {Base: 4, Next: 8, Size: 400, Digest: 0xbb, State: "local"}},
			Digests:  []SegmentRecord{{Base: 4, Next: 8, Size: 400, Digest: 0xbb, ManifestDigest: 0xbb}},
			Probes: []Probe{{From: 0, Compacted: true, FirstKept: 4}, {From: 2, Compacted: true, FirstKept: 4},
				{From: 3, Compacted: true, FirstKept: 4}, {From: 4, Got: true, First: 4}},
		}
		reps = append(reps, rep)
	}
	return h, reps
}

func retRule(t *testing.T, res []CheckResult) CheckResult {
	t.Helper()
	for _, r := range res {
		if r.Rule == 12 {
			return r
		}
	}
	t.Fatal("rule 12 did not run")
	return CheckResult{}
}

func TestRetentionCleanHistoryPasses(t *testing.T) {
	h, reps := retHistory()
	c := retRule(t, expectOnly(t, h, reps))
	for k, want := range map[string]int{"first_kept": 4, "covered_acks_below_cut": 4, "uncovered_acks_kept": 1,
		"reads_compacted": 1, "subscriber_jumps": 1, "common_sealed_segments": 1, "cuts_seen": 1, "cuts_during_faults": 1} {
		if c.Notes[k] != want {
			t.Errorf("note %s = %d, want %d; notes %v", k, c.Notes[k], want, c.Notes)
		}
	}
}

// An acknowledged event of the uncovered stream below the cut: the
// planner cut past a segment a stream no policy covers kept. Rules 1-9
// skip offsets below the cut; only rule 12 sees it.
func TestRetentionCatchesUncoveredEventLost(t *testing.T) {
	h, reps := retHistory()
	h.Appends[2].Stream = "keep/keep0"
	c := retRule(t, expectOnly(t, h, reps, 12))
	if c.Violations != 1 {
		t.Errorf("violations %d, want 1: %q", c.Violations, c.Examples)
	}
}

// An acknowledged covered event above the cut missing on one node.
func TestRetentionCatchesCoveredEventLostAboveCut(t *testing.T) {
	h, reps := retHistory()
	reps[1].Values[6] = ""
	reps[1].Hash = "other"
	retRule(t, expectOnly(t, h, reps, 1, 2, 9, 12))
}

// One node's sealed segment reads differently now than when it was sealed
// and than the other nodes'.
func TestRetentionCatchesDigestsDiffer(t *testing.T) {
	h, reps := retHistory()
	reps[2].Retention.Digests[0].Digest = 0xcc
	c := retRule(t, expectOnly(t, h, reps, 12))
	if c.Violations < 2 { // differs from its manifest, from the other nodes
		t.Errorf("violations %d, want at least 2: %q", c.Violations, c.Examples)
	}
}

// The replicated manifests disagree on a segment's digest.
func TestRetentionCatchesManifestsDiffer(t *testing.T) {
	h, reps := retHistory()
	reps[0].Retention.Manifest[0].Digest = 0xab
	retRule(t, expectOnly(t, h, reps, 12))
}

// The nodes end at different first kept offsets.
func TestRetentionCatchesFirstKeptDiffers(t *testing.T) {
	h, reps := retHistory()
	reps[2].Retention.First, reps[2].Retention.DigestFirst = 0, 0
	retRule(t, expectOnly(t, h, reps, 12))
}

// A read below the cut answered with later records (a silent gap), and a
// refusal naming an offset not above the read's start.
func TestRetentionCatchesSilentGapAndBadRefusal(t *testing.T) {
	h, reps := retHistory()
	reps[0].Retention.Probes[0] = Probe{From: 0, Got: true, First: 4}
	h.Reads[1].FirstKept = 0
	c := retRule(t, expectOnly(t, h, reps, 12))
	if c.Violations != 2 {
		t.Errorf("violations %d, want 2: %q", c.Violations, c.Examples)
	}
}

// No cut at all: the run tested nothing.
func TestRetentionCatchesNoCut(t *testing.T) {
	h, reps := retHistory()
	for i := range reps {
		rr := reps[i].Retention
		rr.First, rr.DigestFirst, rr.Probes = 0, 0, []Probe{{From: 0, Got: true, First: 0}}
		rr.Manifest = rr.Manifest[1:]
	}
	h.Reads = h.Reads[:1]
	h.Subs[0].Start, h.Subs[0].Jumps = 4, nil
	for i := range reps {
		reps[i] = Replica{Node: reps[i].Node, Retention: reps[i].Retention, Values: slices.Clone(h.Reads[0].Values)}
		reps[i].Length, reps[i].Hash = len(reps[i].Values), "same"
	}
	retRule(t, expectOnly(t, h, reps, 12))
}

// A node's first kept offset went back during the run (reads below the
// cut it had announced would be served again).
func TestRetentionCatchesFirstKeptGoingBack(t *testing.T) {
	h, reps := retHistory()
	h.Cuts = append(h.Cuts, CutObs{At: 80 * ms, Node: "n1", First: 2})
	retRule(t, expectOnly(t, h, reps, 12))
}

// The retention scenario's settings: small segments, a cut planned every
// second, a policy on the prefix every workload stream has and not on the
// keeper's, the keeper starting inside the fault window of the short
// profile, and at least two faults planned in it for every seed.
func TestRetentionScenario(t *testing.T) {
	ss, err := FindScenarios("retention")
	if err != nil {
		t.Fatal(err)
	}
	s := ss[0]
	r := s.Retention
	if r == nil {
		t.Fatal("no retention spec")
	}
	args := strings.Join(s.ServeArgs, " ")
	for _, want := range []string{"--segment-bytes 65536", "--retention-interval 1s"} {
		if !strings.Contains(args, want) {
			t.Errorf("serve args %q lack %q", args, want)
		}
	}
	run := &RetentionRun{Prefix: r.Prefix}
	if !run.covered(valueStream("idem0-1")) || !run.covered(valueStream("raw1-2")) || !run.covered(valueStream("final-marker")) {
		t.Errorf("policy prefix %q does not cover the workload's streams", r.Prefix)
	}
	if run.covered(r.Uncovered + "keep0") {
		t.Errorf("policy prefix %q covers the keeper's stream", r.Prefix)
	}
	if r.MaxBytes < 2*65536 || r.MaxBytes > 1<<20 {
		t.Errorf("max-bytes %d: want a few 64 KiB segments, so cuts come every second or two", r.MaxBytes)
	}
	d := Profiles["short"].Duration
	from, to := phases(d)
	if k := time.Duration(r.KeeperFrom * float64(d)); k <= from || k >= to {
		t.Errorf("keeper starts at %v, outside the fault window [%v, %v]", k, from, to)
	}
	for seed := uint64(1); seed <= 20; seed++ {
		if plan := planFaults(rand.New(rand.NewPCG(seed, 1)), s, from, to); len(plan) < 2 {
			t.Errorf("seed %d: %d faults planned", seed, len(plan))
		}
	}
}

// A dropped segment's file is still in a node's fsm/log.
func TestRetentionCatchesLeftoverFile(t *testing.T) {
	h, reps := retHistory()
	reps[1].Retention.Leftover = []uint64{0}
	retRule(t, expectOnly(t, h, reps, 12))
}

// Rule 8 accepts a chain of jumps (the cut moved again before the resume
// from the first one's target), and nothing else.
func TestJumpsCover(t *testing.T) {
	jumps := []Jump{{From: 1, To: 4}, {From: 4, To: 9}}
	for _, c := range []struct {
		from, to uint64
		want     bool
	}{{1, 4, true}, {1, 9, true}, {4, 9, true}, {1, 8, false}, {2, 9, false}, {9, 12, false}} {
		if got := jumpsCover(jumps, c.from, c.to); got != c.want {
			t.Errorf("jumpsCover(%d, %d) = %v, want %v", c.from, c.to, got, c.want)
		}
	}
	if jumpsCover([]Jump{{From: 3, To: 3}}, 3, 4) {
		t.Error("a jump to its own offset covers nothing")
	}
}
