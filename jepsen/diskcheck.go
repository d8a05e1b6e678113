package jepsen

import (
	"fmt"
	"sort"
	"time"
)

// Rule 11, the disk-full checker: a full disk is a state, not a hang
// (issue #11 point 5, server/disk.go, server/snapguard.go), judged on
// the history and on what the nemesis saw in each disk fault (DiskFault).
//
//   - refused means nothing written: an append refused DISK_FULL is in no
//     replica;
//   - noticed: every filled node reported its disk problem (Status) or
//     exited within detectWithin of the fill;
//   - refused at once: while the leader's disk, or a majority's, is below
//     the watermark (depth low), an append invoked from refuseSettle after
//     every filled node reported until the heal is not acknowledged, and
//     is answered within refuseWithin (a refusal, not a hang to the
//     client's deadline); on the leader alone only if it stayed leader;
//   - no permanent exit: a node that exits on a full disk exits with a
//     status systemd restarts (not 78);
//   - snapshot sends back off: no InstallSnapshot reaches a node that has
//     reported it cannot persist for snapshotQuiet since its last start,
//     from a leader in office for snapshotQuiet (a leader probes every
//     server's disk every 2 s; a new one knows nothing until its first
//     probe);
//   - recovery without a restart: within recoverWithin of the heal every
//     node runs, serves and reports no problem (the supervisor restarts only
//     nodes that exited), and the cluster acknowledges an append.
//
// That acknowledged appends survive and replicas agree is rules 1-9.
const (
	// refuseSettle is how long after every filled node reported its
	// problem the leader must refuse: its own check is immediate, its view
	// of the voters is at most one probe (every 2 s) old.
	refuseSettle = 2500 * time.Millisecond
	// refuseWithin bounds the answer to an append that must be refused: the
	// SDK's per-attempt timeout in the workload.
	refuseWithin = 2 * time.Second
	// snapshotQuiet: two leader probes (2 s apart) after a node reported.
	snapshotQuiet = 4 * time.Second
)

// mustRefuse reports whether, during df, the leader had to refuse every
// append: a majority (or all) of the voters below the watermark, or the
// leader itself, still leading at the heal.
func (df *DiskFault) mustRefuse() bool {
	if df.Depth != "low" || df.Settled == 0 {
		return false
	}
	switch df.Scope {
	case "majority", "all":
		return true
	case "leader":
		return df.Leader != "" && df.LeaderAtHeal == df.Leader
	}
	return false
}

// diskFaults returns the disk faults of a history.
func diskFaults(h *History) []*DiskFault {
	var out []*DiskFault
	for i := range h.Faults {
		if d := h.Faults[i].Disk; d != nil {
			out = append(out, d)
		}
	}
	return out
}

// hasDiskFull reports whether rule 11 applies: the history has disk faults
// or DISK_FULL refusals.
func hasDiskFull(h *History) bool {
	if len(diskFaults(h)) > 0 {
		return true
	}
	for i := range h.Appends {
		if h.Appends[i].DiskFull {
			return true
		}
	}
	return false
}

// checkDiskFull is rule 11.
func checkDiskFull(h *History, reps []Replica) CheckResult {
	c := CheckResult{Rule: 11, Name: "disk full is a state, not a hang"}
	checkRefusedAbsent(&c, h, reps)
	oks := okCompletions(h)
	for _, a := range h.Appends {
		if a.Outcome == OK && a.Process == "final" {
			oks = append(oks, a.Complete)
		}
	}
	sort.Slice(oks, func(i, j int) bool { return oks[i] < oks[j] })
	for _, df := range diskFaults(h) {
		c.Checked++
		c.note("faults_"+df.Depth, 1)
		checkNoticed(&c, df)
		if df.mustRefuse() {
			checkRefusedAtOnce(&c, h, df)
		}
		for _, e := range df.Exits {
			c.note("node_exits", 1)
			if e.Code == exitPermanent {
				c.violate("%s exited %d (permanent: systemd does not restart it) at %v during a %s disk fault: %s",
					e.Node, e.Code, e.At, df.Depth, e.Last)
			}
		}
		c.note("restarts", df.Restarts)
		checkSnapshotBackoff(&c, df)
		checkRecovered(&c, df, oks)
	}
	return c
}

// checkRefusedAbsent: an append refused DISK_FULL wrote nothing.
func checkRefusedAbsent(c *CheckResult, h *History, reps []Replica) {
	refused := map[string]*AppendOp{}
	for i := range h.Appends {
		if a := &h.Appends[i]; a.DiskFull && a.Outcome == Fail {
			c.Checked++
			c.note("refused_disk_full", 1)
			for _, v := range a.Values {
				refused[v] = a
			}
		}
	}
	if len(refused) == 0 {
		return
	}
	for _, rep := range reps {
		for off, v := range rep.Values {
			if a := refused[v]; a != nil {
				c.violate("%s: offset %d holds %q of an append refused DISK_FULL by %s at %v (%d attempts): %s",
					rep.Node, off, v, a.Process, a.Complete, a.Attempts, a.Err)
			}
		}
	}
}

// checkNoticed: every filled node reported its problem or exited in time.
func checkNoticed(c *CheckResult, df *DiskFault) {
	for _, t := range df.Targets {
		switch {
		case len(t.Reports) > 0:
			c.noteMax("detect_ms_max", int((t.Reports[0] - df.Filled).Milliseconds()))
			if t.NotServing {
				c.note("not_serving_seen", 1)
			}
		case t.Exited:
		case t.Reclaimed:
			// The node freed space itself before its next disk check
			// (seed 20261209: a snapshot install truncated its Raft log
			// right after the fill): nothing to report.
			c.note("reclaimed_before_report", 1)
		default:
			c.violate("%s: its disk %s at %v, it neither reported a disk problem nor exited within %v",
				t.Node, map[string]string{"low": "below the watermark", "full": "full"}[df.Depth], df.Filled, detectWithin)
		}
	}
}

// checkRefusedAtOnce: appends invoked while the leader had to refuse were
// refused, not acknowledged and not left hanging.
func checkRefusedAtOnce(c *CheckResult, h *History, df *DiskFault) {
	from := df.Settled + refuseSettle
	for i := range h.Appends {
		a := &h.Appends[i]
		if a.Process == "final" || a.Invoke < from || a.Invoke >= df.Healed {
			continue
		}
		c.Checked++
		switch took := a.Complete - a.Invoke; {
		case a.Outcome == OK && a.Complete < df.Healed:
			c.violate("%s's %q acknowledged at %v while the leader had to refuse (%s disk of the %s, every filled node reporting since %v)",
				a.Process, a.Values[0], a.Complete, df.Depth, df.Scope, df.Settled)
		case took > refuseWithin && a.Invoke+refuseWithin < df.Healed:
			c.violate("%s's %q invoked at %v while the leader had to refuse was answered only after %v (%s): a hang, not a refusal",
				a.Process, a.Values[0], a.Invoke, took.Round(time.Millisecond), a.Err)
		case a.DiskFull:
			c.note("refused_while_must_refuse", 1)
		}
	}
}

// checkSnapshotBackoff: no snapshot stream reached a node that had been
// reporting it cannot persist for snapshotQuiet since its last start.
func checkSnapshotBackoff(c *CheckResult, df *DiskFault) {
	for _, t := range df.Targets {
		c.note("snapshot_streams_to_filled_nodes", len(t.Snapshots)+t.SnapshotsDropped)
		for _, s := range t.Snapshots {
			r, ok := reportingSince(&t, s)
			l, known := leaderSince(df, s)
			if ok && known && s-r >= snapshotQuiet && s-l.At >= snapshotQuiet {
				c.violate("%s: a snapshot stream reached it at %v, %v after it reported it cannot persist (%s), with %s leading since %v",
					t.Node, s, (s - r).Round(time.Millisecond), t.Problem, l.Leader, l.At)
			}
		}
	}
}

// reportingSince is when t began reporting the problem it was reporting at
// s: its first report after its last start before s.
func reportingSince(t *DiskTarget, s time.Duration) (time.Duration, bool) {
	var lastStart time.Duration
	for _, st := range t.Starts {
		if st <= s {
			lastStart = st
		}
	}
	for _, r := range t.Reports {
		if r >= lastStart && r <= s {
			return r, true
		}
	}
	return 0, false
}

// leaderSince is the leader at s (the newest term first seen by then) and
// when it was first seen.
func leaderSince(df *DiskFault, s time.Duration) (LeaderObservation, bool) {
	var l LeaderObservation
	known := false
	for _, o := range df.Terms {
		if o.At <= s && (!known || o.Term > l.Term) {
			l, known = o, true
		}
	}
	return l, known
}

// checkRecovered: everything recovered within recoverWithin of the heal.
func checkRecovered(c *CheckResult, df *DiskFault, oks []time.Duration) {
	switch {
	case df.Cut:
		c.note("faults_cut", 1) // the final phase requires the cluster to recover
		return
	case df.Recovered == 0:
		var stuck string
		for _, t := range df.Targets {
			if t.Cleared == 0 {
				stuck += fmt.Sprintf(" %s (exited during the fault: %v)", t.Node, t.Exited)
			}
		}
		c.violate("%s %s disk fault healed at %v: the cluster did not run, serve and report no disk problem on every node within %v; still reporting:%s",
			df.Depth, df.Scope, df.Healed, recoverWithin, stuck)
	default:
		c.noteMax("recover_ms_max", int((df.Recovered - df.Healed).Milliseconds()))
	}
	i := sort.Search(len(oks), func(i int) bool { return oks[i] >= df.Healed })
	if i == len(oks) || oks[i]-df.Healed > recoverWithin {
		c.violate("%s %s disk fault healed at %v: no append acknowledged within %v", df.Depth, df.Scope, df.Healed, recoverWithin)
	}
}
