package jepsen

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

const sec = time.Second

// diskHistory is cleanHistory plus a low-disk fault on a majority
// (n1, the leader, and n2) from 1 s, healed at 8 s: both report at 1.5 s,
// so the leader must refuse from 4 s; appends invoked then are refused
// DISK_FULL within a few milliseconds and are in no replica; the first
// append after the heal is acknowledged at 8.3 s. A refused
// InstallSnapshot reached n2 at 2 s, before the leader could know.
func diskHistory() (*History, []Replica) {
	h, reps := cleanHistory()
	h.Faults = append(h.Faults, Fault{Kind: "disk-low-majority", Target: "n1,n2", Start: 1 * sec, End: 9 * sec,
		Disk: &DiskFault{Depth: "low", Scope: "majority", Leader: "n1", LeaderAtHeal: "n1",
			Targets: []DiskTarget{
				{Node: "n1", Filled: 180 << 20, FreeAfter: 60 << 20, Reports: []time.Duration{1500 * ms}, Problem: "disk space low", NotServing: true, Cleared: 8200 * ms},
				{Node: "n2", Filled: 180 << 20, FreeAfter: 60 << 20, Reports: []time.Duration{1500 * ms}, Problem: "disk space low", NotServing: true, Cleared: 8200 * ms,
					Snapshots: []time.Duration{2 * sec}},
			},
			Terms:  []LeaderObservation{{At: 1100 * ms, Leader: "n1", Term: 2}},
			Filled: 1100 * ms, Settled: 1500 * ms, Healed: 8 * sec, Recovered: 8500 * ms}})
	for i, at := range []time.Duration{4100 * ms, 4500 * ms, 5 * sec, 7900 * ms} {
		h.Appends = append(h.Appends, AppendOp{Process: "p2", Idempotent: true, Values: []string{fmt.Sprintf("p2-full%d", i)},
			Invoke: at, Complete: at + 3*ms, Outcome: Fail, Attempts: 1, DiskFull: true, Err: "ResourceExhausted: DISK_FULL"})
	}
	L := reps[0].Values
	h.Appends = append(h.Appends, AppendOp{Process: "p1", Idempotent: true, Values: []string{"p1-healed"},
		Invoke: 8300 * ms, Complete: 8305 * ms, Outcome: OK, First: uint64(len(L)), Attempts: 1})
	for i := range reps {
		reps[i] = replica(reps[i].Node, append(slices.Clone(L), "p1-healed"))
	}
	return h, reps
}

func diskRule(t *testing.T, res []CheckResult) CheckResult {
	t.Helper()
	for _, r := range res {
		if r.Rule == 11 {
			return r
		}
	}
	t.Fatal("rule 11 did not run")
	return CheckResult{}
}

func TestDiskFullCleanHistoryPasses(t *testing.T) {
	h, reps := diskHistory()
	c := diskRule(t, expectOnly(t, h, reps))
	for k, want := range map[string]int{"refused_disk_full": 4, "refused_while_must_refuse": 4,
		"snapshot_streams_to_filled_nodes": 1, "detect_ms_max": 400, "recover_ms_max": 500} {
		if c.Notes[k] != want {
			t.Errorf("note %s = %d, want %d (notes %v)", k, c.Notes[k], want, c.Notes)
		}
	}
	// Without disk faults or refusals rule 11 does not run.
	h, reps = cleanHistory()
	for _, r := range Check(h, reps) {
		if r.Rule == 11 {
			t.Errorf("rule 11 ran on a history without disk faults")
		}
	}
}

// An append refused DISK_FULL that is in the log wrote something: rule 4
// (a definitely failed append stored) and rule 11.
func TestDiskFullCatchesRefusedAppendPresent(t *testing.T) {
	h, reps := diskHistory()
	for i := range reps {
		reps[i] = replica(reps[i].Node, append(reps[i].Values, "p2-full1"))
	}
	c := diskRule(t, expectOnly(t, h, reps, 4, 11))
	if c.Violations != 3 || !strings.Contains(c.Examples[0], "refused DISK_FULL") {
		t.Errorf("want one violation per replica naming the refusal, got %d: %q", c.Violations, c.Examples)
	}
}

// While the leader must refuse, an acknowledgement and an append left
// hanging past refuseWithin are violations; once the leader changed
// (leader-only fault), an acknowledgement is not.
func TestDiskFullCatchesAckOrHangWhileMustRefuse(t *testing.T) {
	h, reps := diskHistory()
	L := reps[0].Values
	ack := AppendOp{Process: "p3", Values: []string{"p3-accepted"}, Invoke: 4200 * ms, Complete: 4210 * ms,
		Outcome: OK, First: uint64(len(L) - 1), Attempts: 1}
	// The ack comes between two of p2's refusals and before p1-healed.
	h.Appends[len(h.Appends)-1].First++
	h.Appends = append(h.Appends, ack)
	vals := slices.Insert(slices.Clone(L), len(L)-1, "p3-accepted")
	for i := range reps {
		reps[i] = replica(reps[i].Node, vals)
	}
	c := diskRule(t, expectOnly(t, h, reps, 11))
	if c.Violations != 1 || !strings.Contains(c.Examples[0], "acknowledged at 4.21s while the leader had to refuse") {
		t.Errorf("got %d violations: %q", c.Violations, c.Examples)
	}

	h, reps = diskHistory()
	h.Appends = append(h.Appends, AppendOp{Process: "p3", Values: []string{"p3-hung"}, Invoke: 4200 * ms, Complete: 8900 * ms,
		Outcome: Unknown, Attempts: 2, Err: "DeadlineExceeded"})
	c = diskRule(t, expectOnly(t, h, reps, 11))
	if c.Violations != 1 || !strings.Contains(c.Examples[0], "a hang, not a refusal") {
		t.Errorf("got %d violations: %q", c.Violations, c.Examples)
	}
	// Invoked too close to the heal to tell: not judged.
	h, reps = diskHistory()
	h.Appends = append(h.Appends, AppendOp{Process: "p3", Values: []string{"p3-late"}, Invoke: 6500 * ms, Complete: 9500 * ms,
		Outcome: Unknown, Attempts: 2, Err: "DeadlineExceeded"})
	expectOnly(t, h, reps)

	// The leader alone was low but lost leadership: its successor may
	// accept appends.
	h, reps = diskHistory()
	df := h.Faults[0].Disk
	df.Scope, df.Targets, df.LeaderAtHeal = "leader", df.Targets[:1], "n3"
	h.Faults[0].Kind = "disk-low-leader"
	L = reps[0].Values
	h.Appends[len(h.Appends)-1].First++
	h.Appends = append(h.Appends, ack)
	vals = slices.Insert(slices.Clone(L), len(L)-1, "p3-accepted")
	for i := range reps {
		reps[i] = replica(reps[i].Node, vals)
	}
	expectOnly(t, h, reps)
	// A follower alone, or a full disk (nodes exit): no refusal window.
	for _, d := range []struct{ scope, depth string }{{"follower", "low"}, {"majority", "full"}} {
		df.Scope, df.Depth, df.LeaderAtHeal = d.scope, d.depth, "n1"
		if df.mustRefuse() {
			t.Errorf("%s %s fault: mustRefuse", d.depth, d.scope)
		}
	}
}

// A filled node that neither reports nor exits; one that exits 78.
func TestDiskFullCatchesUnnoticedAndPermanentExit(t *testing.T) {
	h, reps := diskHistory()
	h.Faults[0].Disk.Targets[1].Reports = nil
	h.Faults[0].Disk.Settled = 0
	c := diskRule(t, expectOnly(t, h, reps, 11))
	if c.Violations != 1 || !strings.Contains(c.Examples[0], "n2: its disk below the watermark") {
		t.Errorf("got %d violations: %q", c.Violations, c.Examples)
	}
	// A node that freed the space itself before it had to report (its
	// Raft log truncated by a snapshot) is no violation.
	h, reps = diskHistory()
	h.Faults[0].Disk.Targets[1].Reports, h.Faults[0].Disk.Targets[1].Reclaimed = nil, true
	h.Faults[0].Disk.Settled = 0
	if c := diskRule(t, expectOnly(t, h, reps)); c.Notes["reclaimed_before_report"] != 1 {
		t.Errorf("reclaimed space: notes %v", c.Notes)
	}
	// Exiting is noticing (the full depth's way), unless with 78.
	h, reps = diskHistory()
	df := h.Faults[0].Disk
	df.Depth, df.Targets[1].Reports, df.Targets[1].Exited = "full", nil, true
	df.Exits = []DiskExit{{Node: "n2", Code: 1, At: 1200 * ms, Last: "no space left on device"}}
	df.Restarts = 1
	c = diskRule(t, expectOnly(t, h, reps))
	if c.Notes["node_exits"] != 1 || c.Notes["restarts"] != 1 {
		t.Errorf("notes %v", c.Notes)
	}
	df.Exits[0].Code = exitPermanent
	c = diskRule(t, expectOnly(t, h, reps, 11))
	if c.Violations != 1 || !strings.Contains(c.Examples[0], "exited 78") {
		t.Errorf("got %d violations: %q", c.Violations, c.Examples)
	}
}

// A snapshot stream reaching a node that has reported its problem for
// snapshotQuiet, from a leader in office as long, is a loop; not after
// the node's restart, nor from a newly elected leader.
func TestDiskFullCatchesSnapshotLoop(t *testing.T) {
	h, reps := diskHistory()
	tg := &h.Faults[0].Disk.Targets[1]
	tg.Snapshots = append(tg.Snapshots, 5600*ms)
	c := diskRule(t, expectOnly(t, h, reps, 11))
	if c.Violations != 1 || !strings.Contains(c.Examples[0], "n2: a snapshot stream reached it at 5.6s, 4.1s after") {
		t.Errorf("got %d violations: %q", c.Violations, c.Examples)
	}
	// Restarted at 3 s, reporting again from 3.2 s: its leader could not
	// know yet.
	tg.Starts, tg.Reports = []time.Duration{3 * sec}, []time.Duration{1500 * ms, 3200 * ms}
	expectOnly(t, h, reps)
	// A new leader from 4 s.
	h, reps = diskHistory()
	df := h.Faults[0].Disk
	df.Targets[1].Snapshots = append(df.Targets[1].Snapshots, 5600*ms)
	df.Terms = append(df.Terms, LeaderObservation{At: 4 * sec, Leader: "n3", Term: 3})
	expectOnly(t, h, reps)
}

// Not recovered within recoverWithin of the heal; no append acknowledged
// after it.
func TestDiskFullCatchesNoRecovery(t *testing.T) {
	h, reps := diskHistory()
	h.Faults[0].Disk.Recovered = 0
	h.Faults[0].Disk.Targets[0].Cleared = 0
	c := diskRule(t, expectOnly(t, h, reps, 11))
	if c.Violations != 1 || !strings.Contains(c.Examples[0], "still reporting: n1 (exited during the fault: false)") {
		t.Errorf("got %d violations: %q", c.Violations, c.Examples)
	}
	h, reps = diskHistory()
	last := &h.Appends[len(h.Appends)-1]
	last.Invoke, last.Complete = 30*sec, 30*sec+5*ms
	c = diskRule(t, expectOnly(t, h, reps, 11))
	if c.Violations != 1 || !strings.Contains(c.Examples[0], "no append acknowledged within 20s") {
		t.Errorf("got %d violations: %q", c.Violations, c.Examples)
	}
	// A fault cut short by the end of the nemesis's window is left to the
	// final phase.
	h.Faults[0].Disk.Cut = true
	c = diskRule(t, expectOnly(t, h, reps))
	if c.Notes["faults_cut"] != 1 {
		t.Errorf("notes %v", c.Notes)
	}
	h.Faults[0].Disk.Cut = false
	// The final phase's marker counts as an acknowledged append.
	last.Process = "final"
	last.Invoke, last.Complete = 9*sec, 9*sec+5*ms
	expectOnly(t, h, reps)
}

func TestFillSize(t *testing.T) {
	const mib = 1 << 20
	for _, c := range []struct {
		depth     string
		free, min int64
		want      int64
	}{
		{"low", 200 * mib, 64 * mib, 140 * mib}, // leaves 60 MiB: 4 MiB below the mark
		{"low", 50 * mib, 64 * mib, 0},          // already below
		{"full", 200 * mib, 64 * mib, 200 * mib},
		{"full", 0, 64 * mib, 0},
	} {
		if got := fillSize(c.depth, c.free, c.min, 4*mib); got != c.want {
			t.Errorf("fillSize(%s, %d, %d) = %d, want %d", c.depth, c.free, c.min, got, c.want)
		}
	}
}

// The node's log carries raft's lines (hclog: @timestamp, @message) and
// its own (slog: time, msg); the flood limit's dropped count is added.
func TestParseSnapshotStreams(t *testing.T) {
	start := time.Date(2026, 12, 6, 9, 0, 0, 0, time.UTC)
	at := func(d time.Duration) string { return start.Add(d).Format(time.RFC3339Nano) }
	log := strings.Join([]string{
		`{"@level":"error","@message":"failed to create snapshot to install","@module":"raft","@timestamp":"` + at(2*sec) + `","error":"refusing to install the snapshot at index 5048"}`,
		`{"@level":"info","@message":"starting snapshot up to","@module":"raft","@timestamp":"` + at(3*sec) + `","index":1080}`,
		`{"@level":"error","@message":"failed to create snapshot to install","@module":"raft","@timestamp":"` + at(4*sec) + `","dropped":7}`,
		`{"time":"` + at(4500*ms) + `","level":"INFO","msg":"copied to local snapshot","bytes":631161}`,
		`not json, failed to copy snapshot`,
		`{"@level":"info","@message":"copied to local snapshot","@module":"raft","@timestamp":"` + at(9*sec) + `","bytes":631161}`,
	}, "\n")
	got, dropped := parseSnapshotStreams(strings.NewReader(log), start, 8*sec)
	if want := []time.Duration{2 * sec, 4 * sec, 4500 * ms}; !slices.Equal(got, want) || dropped != 7 {
		t.Errorf("got %v dropped %d, want %v dropped 7", got, dropped, want)
	}
}
