package jepsen

import (
	"fmt"
	"maps"
	"slices"
	"sort"
)

// Rule 10, the fencing checker: training runs' writer fencing (scenario
// "fencing", fencing.go), judged on each run's stream as every replica
// holds it after healing.
//
//   - stale generation: every event of a run's stream other than a fence
//     carries the generation of the most recent "$fence" before it, so
//     no append of generation g commits after the fence of g+1 (nor
//     before the fence of g); an event no run writer wrote is flagged too;
//   - fenced append present: an append refused FENCED wrote nothing;
//   - fence generations: the fences of a run are generations 1, 2, 3, ...
//     in stream order, without gaps, each decodable;
//   - StartRun outcomes: the generation an acknowledged StartRun returned
//     is in the stream, in a fence carrying that op's reason; a definitely
//     failed StartRun wrote no fence; every fence was written by some
//     StartRun; a StartRun invoked after another was acknowledged got a
//     higher generation;
//   - spurious FENCED: a writer was refused only by a generation newer
//     than its own that is in the run's stream;
//   - replicas agree on every run's stream (offsets and values).
//
// That every acknowledged append survives at its offset, once, and that
// an append with an unknown outcome is stored at most once, rules 1, 3
// and 4 check for every append, the run writers' included.

// runEvent is one event of a run's stream: its offset and value.
type runEvent struct {
	off uint64
	v   string
}

// runStreams returns, for each of runs, its events in rep in offset
// order.
func runStreams(rep *Replica, runs map[string]bool) map[string][]runEvent {
	out := map[string][]runEvent{}
	for off, s := range rep.Streams {
		if runs[s] {
			out[s] = append(out[s], runEvent{uint64(off), rep.Values[off]})
		}
	}
	return out
}

// fencingRuns is every run the history fenced or wrote.
func fencingRuns(h *History) map[string]bool {
	runs := map[string]bool{}
	for i := range h.Fences {
		runs[h.Fences[i].Run] = true
	}
	for i := range h.Appends {
		if r := h.Appends[i].Run; r != "" {
			runs[r] = true
		}
	}
	return runs
}

// fenceSeen is what one replica's run stream holds of its fences.
type fenceSeen struct {
	byReason map[string][]uint64 // reason -> generations of its fences
	maxGen   uint64
}

// checkFencing is rule 10.
func checkFencing(h *History, reps []Replica) CheckResult {
	c := CheckResult{Rule: 10, Name: "fenced writers: no stale generation commits"}
	runs := fencingRuns(h)
	names := make([]string, 0, len(runs))
	for r := range runs {
		names = append(names, r)
	}
	sort.Strings(names)
	checkFenceOrder(&c, h)
	var ref map[string][]runEvent
	refNode := ""
	for i := range reps {
		rep := &reps[i]
		if rep.Err != "" || len(rep.Streams) != len(rep.Values) {
			c.note("unreadable_replica_"+rep.Node, 1)
			continue
		}
		streams := runStreams(rep, runs)
		seen := map[string]*fenceSeen{}
		present := map[string]bool{}
		for _, run := range names {
			seen[run] = checkRunStream(&c, rep.Node, run, streams[run])
			for _, e := range streams[run] {
				present[e.v] = true
			}
		}
		checkStartRuns(&c, rep.Node, h, seen)
		checkFencedAppends(&c, rep.Node, h, seen, present)
		if ref == nil {
			ref, refNode = streams, rep.Node
			continue
		}
		for _, run := range names {
			if d := firstDifference(ref[run], streams[run]); d != "" {
				c.violate("replicas differ on %s's stream: %s vs %s: %s", run, refNode, rep.Node, d)
			}
		}
	}
	return c
}

// checkRunStream checks one replica's stream of run: fences 1, 2, 3, ...
// and every other event of the generation of the fence before it.
func checkRunStream(c *CheckResult, node, run string, evs []runEvent) *fenceSeen {
	seen := &fenceSeen{byReason: map[string][]uint64{}}
	cur, curOff := uint64(0), uint64(0)
	for _, e := range evs {
		c.Checked++
		if stream, gen, reason, isFence, ok := parseFenceValue(e.v); isFence {
			switch {
			case !ok || stream != run:
				c.violate("%s: %s's fence at offset %d does not decode: %q", node, run, e.off, e.v)
			case gen != cur+1:
				c.violate("%s: %s's fence at offset %d is generation %d after generation %d: fence generations must be 1, 2, 3, ...", node, run, e.off, gen, cur)
			}
			if ok {
				cur, curOff = gen, e.off
				seen.byReason[reason] = append(seen.byReason[reason], gen)
				seen.maxGen = max(seen.maxGen, gen)
				c.note("fences_"+node, 1)
			}
			continue
		}
		r, _, gen, _, ok := parseRunValue(e.v)
		switch {
		case !ok || r != run:
			c.violate("%s: %s's stream holds %q at offset %d, which no writer of the run appended", node, run, e.v, e.off)
		case cur == 0:
			c.violate("%s: %s at offset %d (generation %d) precedes the run's first fence", node, e.v, e.off, gen)
		case gen != cur:
			c.violate("%s: stale generation: %q at offset %d carries generation %d, but %s was fenced to generation %d at offset %d", node, e.v, e.off, gen, run, cur, curOff)
		}
	}
	return seen
}

// checkStartRuns matches one replica's fences with the StartRun ops: by
// reason, which is unique per op.
func checkStartRuns(c *CheckResult, node string, h *History, seen map[string]*fenceSeen) {
	issued := map[string]map[string]bool{} // run -> reasons
	for i := range h.Fences {
		op := &h.Fences[i]
		if issued[op.Run] == nil {
			issued[op.Run] = map[string]bool{}
		}
		issued[op.Run][op.Reason] = true
		c.Checked++
		var gens []uint64
		if s := seen[op.Run]; s != nil {
			gens = s.byReason[op.Reason]
		}
		if len(gens) > 1 {
			c.note("startrun_retry_wrote_more_fences_"+node, len(gens)-1)
		}
		switch op.Outcome {
		case OK:
			if !slices.Contains(gens, op.Generation) {
				c.violate("%s: StartRun %q of %s returned generation %d, but %s's stream has %v for it", node, op.Reason, op.Run, op.Generation, op.Run, gens)
			}
		case Fail:
			if len(gens) > 0 {
				c.violate("%s: StartRun %q of %s failed (%s), but wrote fence(s) %v", node, op.Reason, op.Run, op.Err, gens)
			}
		default:
			c.note(fmt.Sprintf("startrun_unknown_fences_%d_%s", min(len(gens), 2), node), 1)
		}
	}
	for _, run := range slices.Sorted(maps.Keys(seen)) {
		for _, reason := range slices.Sorted(maps.Keys(seen[run].byReason)) {
			if !issued[run][reason] {
				c.violate("%s: %s has fence(s) %v with reason %q, which no StartRun gave", node, run, seen[run].byReason[reason], reason)
			}
		}
	}
}

// checkFencedAppends checks the appends refused FENCED against one
// replica: absent, and refused by a newer generation that is in the run's
// stream.
func checkFencedAppends(c *CheckResult, node string, h *History, seen map[string]*fenceSeen, present map[string]bool) {
	for i := range h.Appends {
		a := &h.Appends[i]
		if !a.Fenced {
			continue
		}
		c.Checked++
		c.note("fenced_appends_"+node, 1)
		for _, v := range a.Values {
			if present[v] {
				c.violate("%s: %q of %s (generation %d) was refused FENCED but is in %s's stream", node, v, a.Process, a.Generation, a.Run)
				break
			}
		}
		var maxGen uint64
		if s := seen[a.Run]; s != nil {
			maxGen = s.maxGen
		}
		if a.Current <= a.Generation || a.Current > maxGen {
			c.violate("%s: spurious FENCED: %s's append of generation %d was refused as fenced by generation %d; %s's stream reaches generation %d",
				node, a.Process, a.Generation, a.Current, a.Run, maxGen)
		}
	}
}

// checkFenceOrder: a StartRun invoked after another StartRun of the same
// run was acknowledged got a higher generation.
func checkFenceOrder(c *CheckResult, h *History) {
	byRun := map[string][]*FenceOp{}
	for i := range h.Fences {
		if op := &h.Fences[i]; op.Outcome == OK {
			byRun[op.Run] = append(byRun[op.Run], op)
		}
	}
	for _, ops := range byRun {
		byInvoke := slices.Clone(ops)
		sort.Slice(byInvoke, func(i, j int) bool { return byInvoke[i].Invoke < byInvoke[j].Invoke })
		sort.Slice(ops, func(i, j int) bool { return ops[i].Complete < ops[j].Complete })
		var best *FenceOp
		k := 0
		for _, b := range byInvoke {
			for k < len(ops) && ops[k].Complete < b.Invoke {
				if best == nil || ops[k].Generation > best.Generation {
					best = ops[k]
				}
				k++
			}
			if best != nil && b.Generation <= best.Generation {
				c.violate("StartRun %q of %s (invoked %v) got generation %d, not above %q's %d (acknowledged %v)",
					b.Reason, b.Run, b.Invoke, b.Generation, best.Reason, best.Generation, best.Complete)
			}
		}
	}
}

// firstDifference describes where two replicas' streams of one run first
// differ, or returns "".
func firstDifference(a, b []runEvent) string {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return fmt.Sprintf("event %d: %q at offset %d vs %q at offset %d", i, a[i].v, a[i].off, b[i].v, b[i].off)
		}
	}
	if len(a) != len(b) {
		return fmt.Sprintf("%d events vs %d", len(a), len(b))
	}
	return ""
}
