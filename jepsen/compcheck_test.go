package jepsen

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tsstore/tsstore/compaction"
)

const compRun, compDel = "crun/trn0-r0", "cdel/del0-s0"

// compHistory is a small valid compaction run: offset 0 and 9 on a
// workload stream no compaction covers; a finished run at 1-6
// (TrainingStarted, BatchCompleted x2, CheckpointSaved, BatchCompleted,
// TrainingFinished) whose snapshot covers 5, so its three BatchCompleted
// are compacted; a deleted stream at 7-8, compacted. One read and the
// subscriber saw everything before the rewrites, one read after; the
// final probes see the run state, the typed refusal, the kept events and
// the deleted stream's NOT_FOUND on every node.
func compHistory() (*History, []Replica) {
	h := &History{Compaction: &CompactionRun{Keep: slices.Clone(defaultKeep)}}
	types := []string{"", "TrainingStarted", "BatchCompleted", "BatchCompleted", "CheckpointSaved", "BatchCompleted", "TrainingFinished"}
	var L []string
	t := time.Duration(0)
	for off := range 10 {
		op := AppendOp{Process: "p1", Idempotent: true, Invoke: t, Complete: t + 5*ms, Outcome: OK, First: uint64(off), Attempts: 1}
		switch {
		case off == 0 || off == 9:
			op.Values = []string{"p1-" + string(rune('a'+off))}
		case off <= 6:
			op.Process, op.Stream, op.Type = "trn0", compRun, types[off]
			op.Values = []string{typedValue(compRun, types[off], []byte{byte(off)})}
		default:
			op.Process, op.Stream = "del0", compDel
			op.Values = []string{"del0-s0-" + string(rune('0'+off))}
		}
		h.Appends = append(h.Appends, op)
		L = append(L, op.Values[0])
		t += 10 * ms
	}
	h.Compaction.Runs = []TrainRun{{Stream: compRun, Process: "trn0", Finish: "TrainingFinished", Ending: "TrainingFinished", FinishedAt: 65 * ms, StateHash: "abc"}}
	h.Compaction.Deletes = []DeleteOp{{Stream: compDel, Invoke: t, Complete: t + ms, Outcome: OK, Upto: 8, Attempts: 1}}
	h.Compaction.Rewrites = []RewriteObs{{At: 150 * ms, Node: "n1", Base: 0, Size: 300, Digest: 0xbb}}
	h.Faults = []Fault{{Kind: "kill-leader", Target: "n2", Start: 140 * ms, End: 170 * ms}}
	stored := slices.Clone(L)
	for _, off := range []int{2, 3, 5, 7, 8} {
		stored[off] = compactedValue
	}
	h.Reads = []ReadOp{
		{Process: "replay0", From: 0, Invoke: t, Complete: t + ms, Outcome: OK, Values: slices.Clone(L)},
		{Process: "r-lin", From: 0, Linearizable: true, Invoke: t + 100*ms, Complete: t + 101*ms, Outcome: OK, Values: slices.Clone(stored)},
	}
	sub := Subscription{Process: "s1"}
	for off, v := range L {
		sub.Deliveries = append(sub.Deliveries, Delivery{uint64(off), v})
	}
	h.Subs = []Subscription{sub}
	var reps []Replica
	for _, n := range []string{"n1", "n2", "n3"} {
		rep := replica(n, stored)
		rep.Retention = &ReplicaRetention{
			Manifest: []SegmentRecord{{Base: 0, Next: 10, Size: 300, Digest: 0xbb, State: "local"}},
			Digests:  []SegmentRecord{{Base: 0, Next: 10, Size: 300, Digest: 0xbb, ManifestDigest: 0xbb}},
		}
		rep.Compaction = &ReplicaCompaction{
			Runs:    map[string]RunProbe{compRun: {StateHash: "abc", Covers: 5, Compacted: true, FirstKept: 6, Kept: []uint64{1, 4, 6}}},
			Deleted: map[string]string{compDel: "not found"},
		}
		reps = append(reps, rep)
	}
	return h, reps
}

func compRule(t *testing.T, res []CheckResult) CheckResult {
	t.Helper()
	for _, r := range res {
		if r.Rule == 13 {
			return r
		}
	}
	t.Fatal("rule 13 did not run")
	return CheckResult{}
}

func TestCompactionCleanHistoryPasses(t *testing.T) {
	h, reps := compHistory()
	c := compRule(t, expectOnly(t, h, reps))
	for k, want := range map[string]int{"compacted_run_events_n1": 3, "compacted_deleted_events_n2": 2, "run_states_equal": 3,
		"compacted_stream_reads_refused_typed": 3, "rewrites_seen": 1, "rewrites_seen_during_faults": 1, "runs_finished": 1, "deletes_ok": 1} {
		if c.Notes[k] != want {
			t.Errorf("note %s = %d, want %d; notes %v", k, c.Notes[k], want, c.Notes)
		}
	}
	if n := rule(Check(h, reps), 1).Notes["n1_compacted"]; n != 5 {
		t.Errorf("rule 1 noted %d compacted offsets on n1, want 5", n)
	}
}

// compact marks offset off compacted on every replica.
func compact(reps []Replica, off int) {
	for i := range reps {
		reps[i].Values[off] = compactedValue
	}
}

func TestCompactionCatchesUncoveredEventCompacted(t *testing.T) {
	h, reps := compHistory()
	compact(reps, 9) // a workload stream no compaction covers
	c := compRule(t, expectOnly(t, h, reps, 13))
	if !strings.Contains(c.Examples[0], "no policy covers") {
		t.Errorf("examples %q", c.Examples)
	}
}

func TestCompactionCatchesUnfinishedRunCompacted(t *testing.T) {
	h, reps := compHistory()
	h.Compaction.Runs[0].Finish, h.Compaction.Runs[0].Ending = "", "" // its finish was never appended
	expectOnly(t, h, reps, 13)
}

func TestCompactionCatchesKeptTypeCompacted(t *testing.T) {
	h, reps := compHistory()
	compact(reps, 4) // CheckpointSaved
	c := compRule(t, expectOnly(t, h, reps, 13))
	if !strings.Contains(strings.Join(c.Examples, "\n"), "its type is kept") {
		t.Errorf("examples %q", c.Examples)
	}
}

func TestCompactionCatchesCompactedAboveCoverage(t *testing.T) {
	h, reps := compHistory()
	for i := range reps {
		p := reps[i].Compaction.Runs[compRun]
		p.Covers = 3
		reps[i].Compaction.Runs[compRun] = p
	}
	c := compRule(t, expectOnly(t, h, reps, 13))
	if !strings.Contains(c.Examples[0], "above its newest snapshot's coverage 3") {
		t.Errorf("examples %q", c.Examples)
	}
}

func TestCompactionCatchesDeletedBeyondUpto(t *testing.T) {
	h, reps := compHistory()
	h.Compaction.Deletes[0].Upto = 7
	expectOnly(t, h, reps, 13)
}

func TestCompactionCatchesNoRewrite(t *testing.T) {
	h, reps := compHistory()
	_, fresh := compHistory()
	L := h.Reads[0].Values
	for i := range reps {
		reps[i] = replica(reps[i].Node, L)
		reps[i].Retention, reps[i].Compaction = fresh[i].Retention, fresh[i].Compaction
	}
	h.Reads[1].Values = slices.Clone(L)
	c := compRule(t, expectOnly(t, h, reps, 13))
	if c.Violations != 2 || !strings.Contains(c.Examples[0], "tested nothing") {
		t.Errorf("%d violations, examples %q", c.Violations, c.Examples)
	}
}

func TestCompactionCatchesRunStateChanged(t *testing.T) {
	h, reps := compHistory()
	p := reps[1].Compaction.Runs[compRun]
	p.StateHash = "abd"
	reps[1].Compaction.Runs[compRun] = p
	expectOnly(t, h, reps, 13)
}

func TestCompactionCatchesUntypedStreamRead(t *testing.T) {
	h, reps := compHistory()
	p := reps[2].Compaction.Runs[compRun]
	p.Compacted, p.FirstKept, p.ReadErr = false, 0, "tsstore: gap in replayed offsets: stream versions 1 to 4"
	reps[2].Compaction.Runs[compRun] = p
	c := compRule(t, expectOnly(t, h, reps, 13))
	if !strings.Contains(c.Examples[0], "not refused OFFSET_COMPACTED") {
		t.Errorf("examples %q", c.Examples)
	}
	// Refused, but naming an offset inside the compacted range.
	h, reps = compHistory()
	p = reps[0].Compaction.Runs[compRun]
	p.FirstKept = 4
	reps[0].Compaction.Runs[compRun] = p
	expectOnly(t, h, reps, 13)
}

func TestCompactionCatchesKeptEventMissingFromTypedRead(t *testing.T) {
	h, reps := compHistory()
	p := reps[0].Compaction.Runs[compRun]
	p.Kept = []uint64{1, 6}
	reps[0].Compaction.Runs[compRun] = p
	expectOnly(t, h, reps, 13)
}

func TestCompactionCatchesDeletedStreamReadable(t *testing.T) {
	h, reps := compHistory()
	reps[0].Compaction.Deleted[compDel] = "read 2 events"
	expectOnly(t, h, reps, 13)
}

func TestCompactionCatchesDigestsDiffer(t *testing.T) {
	h, reps := compHistory()
	reps[2].Retention.Digests[0].Digest = 0xcc // n3's rewrite differs from the committed one
	expectOnly(t, h, reps, 13)
}

// A reader that saw an offset compacted which the final log still holds
// is rule 5's (and a subscriber's, rule 8's).
func TestCompactionReadSawCompactedButFinalHolds(t *testing.T) {
	h, reps := compHistory()
	h.Reads[1].Values[9] = compactedValue
	expectOnly(t, h, reps, 5)
	h, reps = compHistory()
	h.Subs[0].Deliveries[0].Value = compactedValue
	expectOnly(t, h, reps, 8)
}

func TestPadCompacted(t *testing.T) {
	rep := Replica{Values: []string{"a"}, Streams: []string{"s"}}
	padCompacted(&rep, 3)
	if !slices.Equal(rep.Values, []string{"a", compactedValue, compactedValue}) || len(rep.Streams) != 3 {
		t.Errorf("values %q streams %q", rep.Values, rep.Streams)
	}
}

func TestCompactionScenario(t *testing.T) {
	ss, err := FindScenarios("compaction")
	if err != nil {
		t.Fatal(err)
	}
	s := ss[0]
	cs := s.Compaction
	if cs == nil || cs.Trainers < 1 {
		t.Fatal("no compaction spec, or no trainer")
	}
	args := strings.Join(s.ServeArgs, " ")
	for _, want := range []string{"--segment-bytes 65536", "--retention-interval 1s", "--run-compaction ", "--run-snapshot-batches 8", "--run-compaction-grace 1h"} {
		if !strings.Contains(args+" ", want) {
			t.Errorf("serve args %q lack %q", args, want)
		}
	}
	if strings.Contains(strings.Join(retentionArgs, " "), "--run-compaction") {
		t.Error("the compaction scenario's args leaked into the retention scenario's")
	}
	// The harness repeats the server's default kept types (it is a black
	// box); they must not drift apart.
	if !slices.Equal(cs.Keep, compaction.DefaultKeep) {
		t.Errorf("kept types %q, the server keeps %q", cs.Keep, compaction.DefaultKeep)
	}
	for _, p := range []string{cs.RunPrefix, cs.DelPrefix} {
		if strings.HasPrefix(valueStream("idem0-1"), p) || strings.HasPrefix("jepsen/", p) {
			t.Errorf("prefix %q covers the usual workload's streams", p)
		}
	}
	if !s.FaultFS || len(s.Faults) < 3 {
		t.Errorf("want the faultfs build and kills, partitions and wipes: %v", s.Faults)
	}
}

// A run whose finishing event's outcome is unknown counts as finished if
// the event is in the final log, and as unfinished (never compacted) if
// it is not.
func TestCompactionFinishInDoubt(t *testing.T) {
	h, reps := compHistory()
	h.Appends[6].Outcome, h.Appends[6].First = Unknown, 0
	h.Compaction.Runs[0].Finish = ""
	c := compRule(t, expectOnly(t, h, reps))
	if c.Notes["runs_finished_in_doubt"] != 1 {
		t.Errorf("notes %v", c.Notes)
	}
	h, reps = compHistory()
	h.Appends[6].Type = "BatchCompleted" // offset 6 holds no finish after all
	h.Appends = append(h.Appends, AppendOp{Process: "trn0", Idempotent: true, Values: []string{"never stored"},
		Invoke: 200 * ms, Complete: 300 * ms, Outcome: Unknown, Attempts: 3, Stream: compRun, Type: "TrainingFinished"})
	h.Compaction.Runs[0].Finish = ""
	c = compRule(t, expectOnly(t, h, reps, 13))
	if !strings.Contains(c.Examples[0], "no policy covers") {
		t.Errorf("examples %q", c.Examples)
	}
}
