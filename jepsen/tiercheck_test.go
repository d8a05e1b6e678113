package jepsen

import (
	"math/rand/v2"
	"testing"
	"time"
)

const (
	keyA = "c1/segments/00000000000000000000-00000000000000000004-t2-aa.log"
	keyB = "c1/segments/00000000000000000004-00000000000000000008-t2-bb.log"
)

// tierHistory is cleanHistory (11 events) as a valid tiering run: the
// segments [0, 4) and [4, 8) are tiered and evicted on every node, [8, 11)
// is the active segment; the nemesis deleted [4, 8)'s object after every
// read of the run, so every node's final read of it was refused with
// DataLoss naming the key and verify --tiered failed exactly that object;
// the store was down for a while, during which two uploads failed and the
// backlog grew to 3, then drained.
func tierHistory() (*History, []Replica) {
	h, reps := cleanHistory()
	h.Faults = append(h.Faults,
		Fault{Kind: "store-down", Target: "store", Start: 150 * ms, End: 190 * ms},
		Fault{Kind: "store-delete", Target: "store", Start: 200 * ms, End: 210 * ms})
	h.Tiering = &TieringRun{
		Damaged: []DamagedObject{{Key: keyB, Base: 4, Next: 8, Kind: "deleted", At: 200 * ms}},
		Samples: []TierSample{
			{At: 100 * ms, Node: "n1", Backlog: 1},
			{At: 160 * ms, Node: "n1", Failures: 2, Backlog: 3},
			{At: 300 * ms, Node: "n1", Failures: 2, Segments: 2, Evicted: 2},
		},
		Drained: true,
		Verify: []TierObjectCheck{{Key: keyA, Base: 0, Next: 4, OK: true},
			{Key: keyB, Base: 4, Next: 8, Err: "tiering: object not found"}},
		ProxyRequests: 40, ProxyDown: 6,
	}
	for i := range reps {
		for off := 4; off < 8; off++ {
			reps[i].Values[off] = lostValue
		}
		reps[i] = replica(reps[i].Node, reps[i].Values)
		reps[i].Tier = &ReplicaTier{
			Manifest: []TierSegment{
				{Base: 0, Next: 4, Size: 400, Digest: 0xa, State: "tiered", Key: keyA},
				{Base: 4, Next: 8, Size: 400, Digest: 0xb, State: "tiered", Key: keyB},
			},
			Digests: []TierDigest{{Base: 0, Digest: 0xa, ManifestDigest: 0xa}, {Base: 4, Digest: 0xb, ManifestDigest: 0xb}},
			Ranges: []RangeRead{
				{From: 0, To: 4, Got: 4, Key: keyA},
				{From: 4, To: 8, Key: keyB, Code: "DataLoss", Err: "rpc error: code = DataLoss desc = segment: tiered object " + keyB + " missing"},
				{From: 8, To: 11, Got: 3},
			},
		}
	}
	return h, reps
}

func tierRule(t *testing.T, res []CheckResult) CheckResult {
	t.Helper()
	for _, r := range res {
		if r.Rule == 14 {
			return r
		}
	}
	t.Fatal("rule 14 did not run")
	return CheckResult{}
}

func TestTieringCleanHistoryPasses(t *testing.T) {
	h, reps := tierHistory()
	c := tierRule(t, expectOnly(t, h, reps))
	for k, want := range map[string]int{"tiered_evicted_everywhere": 2, "refused_deleted": 3, "tiered_ranges_read": 3,
		"upload_failures": 2, "upload_failures_during_store_faults": 2, "backlog_max_before_store_faults": 1,
		"backlog_max_during_store_faults": 3, "backlog_at_end": 0, "upload_failures_during_store-down": 2,
		"backlog_max_during_store-down": 3, "proxy_502s_store_down": 6, "objects_deleted": 1} {
		if c.Notes[k] != want {
			t.Errorf("note %s = %d, want %d; notes %v", k, c.Notes[k], want, c.Notes)
		}
	}
}

// A run in which nothing was tiered and evicted proves nothing.
func TestTieringCatchesNothingTiered(t *testing.T) {
	h, reps := tierHistory()
	h.Tiering.Damaged, h.Tiering.Verify = nil, nil
	for i := range reps {
		reps[i] = replica(reps[i].Node, cleanReplicaValues())
		reps[i].Tier = &ReplicaTier{Manifest: []TierSegment{{Base: 0, Next: 4, Size: 400, State: "local", Local: true},
			{Base: 4, Next: 8, Size: 400, State: "tiered", Key: keyB, Local: true}},
			Ranges: []RangeRead{{From: 0, To: 4, Got: 4}, {From: 4, To: 8, Got: 4, Key: keyB}, {From: 8, To: 11, Got: 3}}}
	}
	expectOnly(t, h, reps, 14)
}

func cleanReplicaValues() []string {
	_, reps := cleanHistory()
	return reps[0].Values
}

// The deleted object's range served without an error (say, zeros or a
// stale cache): whatever came back, a damaged object may not be served.
func TestTieringCatchesDamagedObjectServed(t *testing.T) {
	h, reps := tierHistory()
	h.Tiering.Damaged[0].Kind = "flipped"
	for i := range reps {
		tier := reps[i].Tier
		reps[i] = replica(reps[i].Node, cleanReplicaValues())
		reps[i].Tier = tier
		tier.Ranges[1] = RangeRead{From: 4, To: 8, Got: 4, Key: keyB}
	}
	expectOnly(t, h, reps, 14)
}

// Refused, but not with DataLoss naming the key: a store error for a lost
// object, or a DataLoss an operator cannot act on.
func TestTieringCatchesRefusalWithoutTheKey(t *testing.T) {
	for _, r := range []RangeRead{
		{From: 4, To: 8, Key: keyB, Code: "Unavailable", Err: "tiered object " + keyB + ": store unavailable"},
		{From: 4, To: 8, Key: keyB, Code: "DataLoss", Err: "segment corrupt"},
	} {
		h, reps := tierHistory()
		reps[1].Tier.Ranges[1] = r
		expectOnly(t, h, reps, 14)
	}
}

// A range of an undamaged object failed: an acknowledged event is not
// readable.
func TestTieringCatchesUndamagedRangeFailing(t *testing.T) {
	h, reps := tierHistory()
	for i := range reps {
		reps[i].Tier.Ranges[0] = RangeRead{From: 0, To: 4, Key: keyA, Code: "DataLoss", Err: "tiered object " + keyA + " missing"}
		for off := range 4 {
			reps[i].Values[off] = lostValue
		}
		tier := reps[i].Tier
		reps[i] = replica(reps[i].Node, reps[i].Values)
		reps[i].Tier = tier
	}
	expectOnly(t, h, reps, 14)
}

// A range that came back short without an error: a silent gap. Rule 1
// finds the missing event, rule 2 the offset's two values, rule 9 the
// replica that differs, rule 14 the short read.
func TestTieringCatchesShortRead(t *testing.T) {
	h, reps := tierHistory()
	vals := reps[2].Values
	vals[2] = ""
	tier := reps[2].Tier
	reps[2] = replica("n3", vals)
	reps[2].Tier = tier
	tier.Ranges[0].Got = 3
	expectOnly(t, h, reps, 1, 2, 9, 14)
}

// Corrupt bytes served (a payload that is not the acknowledged one) are
// caught by rules 1, 2, 4 (a value nobody appended), 5 (a read saw
// another) and 9, whatever rule 14 sees.
func TestTieringCatchesCorruptPayloadServed(t *testing.T) {
	h, reps := tierHistory()
	vals := reps[0].Values
	vals[1] = "p2-1-flipped"
	tier := reps[0].Tier
	reps[0] = replica("n1", vals)
	reps[0].Tier = tier
	expectOnly(t, h, reps, 1, 2, 4, 5, 9)
}

// The replicas disagree on the manifest: a state, or an object key.
func TestTieringCatchesManifestDisagreement(t *testing.T) {
	h, reps := tierHistory()
	reps[1].Tier.Manifest[0].Key = "c1/segments/other.log"
	expectOnly(t, h, reps, 14)

	h, reps = tierHistory()
	reps[2].Tier.Manifest = reps[2].Tier.Manifest[:1]
	expectOnly(t, h, reps, 14)
}

// A segment's digest read now differs from the manifest's, or between
// nodes (verify --cluster).
func TestTieringCatchesDigestMismatch(t *testing.T) {
	h, reps := tierHistory()
	reps[0].Tier.Digests[1].Digest = 0xbad
	expectOnly(t, h, reps, 14)

	h, reps = tierHistory()
	for i := range reps {
		reps[i].Tier.Digests[0].Digest = uint32(i)
		reps[i].Tier.Digests[0].ManifestDigest = uint32(i)
	}
	expectOnly(t, h, reps, 14)
}

// The backlog never drained after the store came back.
func TestTieringCatchesBacklogNotDrained(t *testing.T) {
	h, reps := tierHistory()
	h.Tiering.Drained, h.Tiering.DrainErr = false, "n1: backlog 3 segments"
	reps[0].Tier.Backlog = 3
	expectOnly(t, h, reps, 14)
}

// verify --tiered passed the deleted object, failed a good one, or did
// not look at a damaged one.
func TestTieringCatchesVerifyTiered(t *testing.T) {
	h, reps := tierHistory()
	h.Tiering.Verify[1] = TierObjectCheck{Key: keyB, Base: 4, Next: 8, OK: true}
	expectOnly(t, h, reps, 14)

	h, reps = tierHistory()
	h.Tiering.Verify[0].OK, h.Tiering.Verify[0].Err = false, "crc mismatch"
	expectOnly(t, h, reps, 14)

	h, reps = tierHistory()
	h.Tiering.Verify = h.Tiering.Verify[:1]
	expectOnly(t, h, reps, 14)
}

// A read during the run refused with DataLoss naming no damaged object,
// or before the damage.
func TestTieringCatchesUnexplainedDataLoss(t *testing.T) {
	for _, r := range []ReadOp{
		{Process: "replay0", From: 0, To: 4, Invoke: 220 * ms, Complete: 221 * ms, Outcome: Fail,
			Err: "rpc error: code = DataLoss desc = tiered object " + keyA + " missing"},
		{Process: "replay0", From: 4, To: 8, Invoke: 190 * ms, Complete: 195 * ms, Outcome: Fail,
			Err: "rpc error: code = DataLoss desc = tiered object " + keyB + " missing"},
	} {
		h, reps := tierHistory()
		h.Reads = append(h.Reads, r)
		expectOnly(t, h, reps, 14)
	}
	h, reps := tierHistory()
	h.Reads = append(h.Reads, ReadOp{Process: "replay0", From: 4, To: 8, Invoke: 220 * ms, Complete: 221 * ms, Outcome: Fail,
		Err: "rpc error: code = DataLoss desc = tiered object " + keyB + " missing"})
	if c := tierRule(t, expectOnly(t, h, reps)); c.Notes["run_reads_refused"] != 1 {
		t.Errorf("notes %v, want run_reads_refused 1", c.Notes)
	}
}

// planStoreFaults runs every store fault once, a non-damaging one first.
func TestPlanStoreFaultsEveryFaultOnce(t *testing.T) {
	s, _ := FindScenarios("tiering")
	spec := s[0].Tiering
	from, to := phases(35 * time.Second)
	for seed := range uint64(50) {
		plan := planStoreFaults(rand.New(rand.NewPCG(seed, 43)), spec, from, to)
		if len(plan) != len(spec.Faults) {
			t.Fatalf("seed %d: %d faults planned, want %d: %v", seed, len(plan), len(spec.Faults), plan)
		}
		if k := plan[0].Kind; k == "store-delete" || k == "store-flip" {
			t.Errorf("seed %d: first fault %s (nothing evicted yet)", seed, k)
		}
		seen := map[string]bool{}
		for _, p := range plan {
			seen[p.Kind] = true
			if p.At < from || p.At+p.Duration > to {
				t.Errorf("seed %d: %s at %v for %v outside [%v, %v)", seed, p.Kind, p.At, p.Duration, from, to)
			}
		}
		if len(seen) != len(spec.Faults) {
			t.Errorf("seed %d: faults %v", seed, plan)
		}
	}
}

// A node that never evicted the deleted object's segment (it kept the
// last copy) serves it; the others refuse it. Rule 9 compares values,
// a refused offset matching any; rules 1 and 2 check what it served.
func TestTieringLocalCopyOfDamagedObjectServed(t *testing.T) {
	h, reps := tierHistory()
	tier := reps[2].Tier
	reps[2] = replica("n3", cleanReplicaValues())
	reps[2].Tier = tier
	tier.Manifest[1].Local = true
	tier.Ranges[1] = RangeRead{From: 4, To: 8, Got: 4, Key: keyB}
	c := tierRule(t, expectOnly(t, h, reps))
	if c.Notes["damaged_served_from_local_copy"] != 1 || c.Notes["refused_deleted"] != 2 {
		t.Errorf("notes %v", c.Notes)
	}
	// What it serves must be the acknowledged events: rules 1 and 2
	// (the other replicas refused the offset, so rule 9 cannot tell).
	reps[2].Values[5] = "p3-5-other"
	reps[2] = replica("n3", reps[2].Values)
	reps[2].Tier = tier
	expectOnly(t, h, reps, 1, 2)
}
