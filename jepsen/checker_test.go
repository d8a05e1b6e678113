package jepsen

import (
	"crypto/sha256"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

const ms = time.Millisecond

// cleanHistory is a small valid run: two idempotent processes and one
// non-idempotent one append sequentially, every kind of read sees the
// log, a subscription delivers all of it, three identical replicas.
func cleanHistory() (*History, []Replica) {
	h := &History{}
	var L []string
	t := time.Duration(0)
	procs := []struct {
		name string
		idem bool
	}{{"p1", true}, {"p2", true}, {"p3", false}}
	for i := range 9 {
		p := procs[i%3]
		v := fmt.Sprintf("%s-%d", p.name, i)
		h.Appends = append(h.Appends, AppendOp{Process: p.name, Idempotent: p.idem, Values: []string{v},
			Invoke: t, Complete: t + 5*ms, Outcome: OK, First: uint64(len(L)), Attempts: 1})
		L = append(L, v)
		t += 10 * ms
	}
	// A two-value append, then one that failed and one in doubt (absent).
	h.Appends = append(h.Appends,
		AppendOp{Process: "p1", Idempotent: true, Values: []string{"p1-a", "p1-b"}, Invoke: t, Complete: t + 5*ms, Outcome: OK, First: uint64(len(L)), Attempts: 2, Recovered: true},
		AppendOp{Process: "p2", Idempotent: true, Values: []string{"p2-failed"}, Invoke: t + 20*ms, Complete: t + 25*ms, Outcome: Fail, Err: "invalid"},
		AppendOp{Process: "p3", Values: []string{"p3-doubt"}, Invoke: t + 20*ms, Complete: t + 30*ms, Outcome: Unknown, Err: "deadline"})
	L = append(L, "p1-a", "p1-b")
	t += 40 * ms
	h.Reads = []ReadOp{
		{Process: "r-lin", From: 0, Linearizable: true, Invoke: t, Complete: t + ms, Outcome: OK, Values: slices.Clone(L)},
		{Process: "p1", From: 9, To: 11, MinNext: 11, Invoke: t, Complete: t + ms, Outcome: OK, Values: slices.Clone(L[9:])},
		{Process: "r-local", From: 3, Invoke: 15 * ms, Complete: 16 * ms, Outcome: OK, Values: slices.Clone(L[3:4])},
	}
	sub := Subscription{Process: "s1", Start: 2}
	for off := 2; off < len(L); off++ {
		sub.Deliveries = append(sub.Deliveries, Delivery{uint64(off), L[off]})
	}
	h.Subs = []Subscription{sub}
	var reps []Replica
	for _, n := range []string{"n1", "n2", "n3"} {
		reps = append(reps, replica(n, L))
	}
	return h, reps
}

func replica(node string, values []string) Replica {
	return Replica{Node: node, Values: slices.Clone(values), Length: len(values),
		Hash: fmt.Sprintf("%x", sha256.Sum256([]byte(strings.Join(values, "\x00"))))}
}

// expectOnly runs the checkers and requires violations from exactly the
// given rules.
func expectOnly(t *testing.T, h *History, reps []Replica, rules ...int) []CheckResult {
	t.Helper()
	res := Check(h, reps)
	for _, r := range res {
		want := slices.Contains(rules, r.Rule)
		if (r.Violations > 0) != want {
			t.Errorf("rule %d (%s): %d violations, want violations: %v; examples %q", r.Rule, r.Name, r.Violations, want, r.Examples)
		}
		if r.Checked == 0 && r.Rule != 9 {
			t.Errorf("rule %d checked nothing", r.Rule)
		}
	}
	if Valid(res) == (len(rules) > 0) {
		t.Errorf("Valid = %v with violations expected from %v", Valid(res), rules)
	}
	return res
}

func rule(res []CheckResult, n int) CheckResult { return res[n-1] }

func TestCleanHistoryPasses(t *testing.T) {
	h, reps := cleanHistory()
	res := expectOnly(t, h, reps)
	if got := rule(res, 4).Notes["unknown_absent"]; got != 1 {
		t.Errorf("unknown_absent = %d, want 1", got)
	}
}

// Rule 1: an acknowledged value missing from one replica.
func TestCatchesLostAck(t *testing.T) {
	h, reps := cleanHistory()
	// n2 lost its last two events: a postfix loss on n2 only. The log
	// is shorter, so the replicas also disagree (rule 9).
	reps[1] = replica("n2", reps[1].Values[:len(reps[1].Values)-2])
	res := expectOnly(t, h, reps, 1, 9)
	if got := rule(res, 1).Notes["n2_lost_postfix"]; got != 2 {
		t.Errorf("n2_lost_postfix = %d, want 2; notes %v", got, rule(res, 1).Notes)
	}
}

// Rule 1 classification: a loss in the middle of every replica.
func TestLostAckInTheMiddle(t *testing.T) {
	h, reps := cleanHistory()
	h.Appends = append(h.Appends, AppendOp{Process: "p9", Idempotent: true, Values: []string{"p9-0"}, Outcome: Unknown})
	for i := range reps {
		vals := slices.Clone(reps[i].Values)
		vals[4] = "p9-0"
		reps[i] = replica(reps[i].Node, vals)
	}
	// The ack, the reads and the subscription disagree with the replicas
	// about offset 4, so rules 2, 5 and 8 fire too.
	res := expectOnly(t, h, reps, 1, 2, 5, 8)
	if got := rule(res, 1).Notes["n3_lost_middle"]; got != 1 {
		t.Errorf("n3_lost_middle = %d, want 1; notes %v", got, rule(res, 1).Notes)
	}
}

// Rule 2: a read reports a different value at an offset than the ack.
func TestCatchesTwoValuesAtOneOffset(t *testing.T) {
	h, reps := cleanHistory()
	h.Reads = append(h.Reads, ReadOp{Process: "r2", From: 5, Outcome: OK, Values: []string{"p3-8"}})
	expectOnly(t, h, reps, 2, 5)
}

// Rule 3: an idempotent value stored twice is a violation; a
// non-idempotent one is only counted.
func TestCatchesDuplicate(t *testing.T) {
	h, reps := cleanHistory()
	for i := range reps {
		reps[i] = replica(reps[i].Node, append(reps[i].Values, "p1-0"))
	}
	expectOnly(t, h, reps, 3)

	h, reps = cleanHistory()
	for i := range reps {
		reps[i] = replica(reps[i].Node, append(reps[i].Values, "p3-2"))
	}
	res := expectOnly(t, h, reps)
	if got := rule(res, 3).Notes["non_idempotent_duplicates_n1"]; got != 1 {
		t.Errorf("non-idempotent duplicates on n1 = %d, want 1", got)
	}
}

// Rule 4: a definitely failed append and a value nobody appended.
func TestCatchesUnexpected(t *testing.T) {
	for _, extra := range []string{"p2-failed", "nobody-wrote-this"} {
		h, reps := cleanHistory()
		for i := range reps {
			reps[i] = replica(reps[i].Node, append(reps[i].Values, extra))
		}
		expectOnly(t, h, reps, 4)
	}
	// Half of an atomic two-value append.
	h, reps := cleanHistory()
	for i := range reps {
		reps[i] = replica(reps[i].Node, reps[i].Values[:len(reps[i].Values)-1])
	}
	expectOnly(t, h, reps, 1, 4, 5, 8)
}

// Rule 4 trusts the workload's outcomes. A raw append (no producer id:
// nothing deduplicates its retries) refused definitely on a retry may have
// committed on an earlier attempt: its outcome is unknown, not failed.
func TestRawDefinite(t *testing.T) {
	if rawDefinite(1) != Fail || rawDefinite(2) != Unknown {
		t.Errorf("rawDefinite(1) = %v, rawDefinite(2) = %v", rawDefinite(1), rawDefinite(2))
	}
}

// Rule 5: a gap in a replica, a read that skipped an offset, and a read
// the client flagged for an integrity error.
func TestCatchesGap(t *testing.T) {
	h, reps := cleanHistory()
	reps[0].Gaps = []uint64{7}
	expectOnly(t, h, reps, 5)

	h, reps = cleanHistory()
	L := reps[0].Values
	h.Reads = append(h.Reads, ReadOp{Process: "r3", From: 2, Outcome: OK, Values: []string{L[2], L[4], L[5]}})
	expectOnly(t, h, reps, 2, 5)

	h, reps = cleanHistory()
	h.Reads = append(h.Reads, ReadOp{Process: "r3", From: 2, Outcome: Fail, Integrity: true, Err: "gap [3, 4)"})
	expectOnly(t, h, reps, 5)
}

// Rule 6: p2's append was invoked after p1's completed but got a lower
// offset.
func TestCatchesReordering(t *testing.T) {
	h, reps := cleanHistory()
	a, b := &h.Appends[3], &h.Appends[4] // offsets 3 and 4, sequential
	a.Invoke, a.Complete, b.Invoke, b.Complete = b.Invoke, b.Complete, a.Invoke, a.Complete
	expectOnly(t, h, reps, 6)
}

// Rule 7: a linearizable read and a read-your-writes read that miss
// acknowledged appends; an equally stale plain local read is allowed.
func TestCatchesStaleRead(t *testing.T) {
	h, reps := cleanHistory()
	h.Reads[0].Values = h.Reads[0].Values[:5]
	expectOnly(t, h, reps, 7)

	h, reps = cleanHistory()
	// MinNext is low, but p1's own earlier acknowledgements still bind it.
	h.Reads[1].Values, h.Reads[1].MinNext = nil, 1
	expectOnly(t, h, reps, 7)

	h, reps = cleanHistory()
	h.Reads = append(h.Reads, ReadOp{Process: "r-local", From: 0, Invoke: time.Hour, Outcome: OK, Values: reps[0].Values[:2]})
	expectOnly(t, h, reps)
}

// Rule 8: a subscription that skips an offset, and one that delivers an
// offset twice across a resume.
func TestCatchesSubscriptionSkipAndDuplicate(t *testing.T) {
	h, reps := cleanHistory()
	d := h.Subs[0].Deliveries
	h.Subs[0].Deliveries = append(slices.Clone(d[:3]), d[4:]...)
	expectOnly(t, h, reps, 8)

	h, reps = cleanHistory()
	d = h.Subs[0].Deliveries
	h.Subs[0].Resumes = []uint64{d[3].Offset}
	h.Subs[0].Deliveries = append(slices.Clone(d[:4]), d[3:]...)
	expectOnly(t, h, reps, 8)
}

// Rule 9: a replica with the same length but different bytes, and one
// that could not be read.
func TestCatchesDivergedReplica(t *testing.T) {
	h, reps := cleanHistory()
	reps[2].Hash = "0000"
	expectOnly(t, h, reps, 9)

	h, reps = cleanHistory()
	reps[2] = Replica{Node: "n3", Err: "DataLoss: checksum mismatch"}
	res := expectOnly(t, h, reps, 9)
	if rule(res, 1).Notes["unreadable_replica_n3"] != 1 {
		t.Errorf("rule 1 did not note the unreadable replica: %v", rule(res, 1).Notes)
	}
}
