package jepsen

import (
	"slices"
)

// checkCompaction is rule 13, applied to a run of the compaction workload
// (h.Compaction set): compaction dropped only what a policy covered, told
// readers so in type, left every run's state as it was and the replicas
// identical, and did happen.
//
//   - (a) every acknowledged event at an offset a replica holds as
//     compacted (a thinned batch's span without its record) belongs to a
//     deleted stream (a delete acknowledged or with an unknown outcome; at
//     or below the acknowledged delete's last offset), or to a finished
//     run (its finishing event acknowledged, or in doubt and in the final
//     log), is not of a kept
//     type, and is at or below the run's newest snapshot's coverage. An
//     event of any other stream (the usual workload's, an unfinished
//     run's) is never compacted.
//   - (b) at least one finished run's events were compacted on the
//     replicas (a run without rewrites tested nothing), and at least one
//     deleted stream's events are not served (reads hide them at once;
//     the final phase's settle wait requires the rewrites).
//   - (c) on every node: each finished run's state (snapshot and tail,
//     local read) has the hash its trainer read right after the finish;
//     a read of a compacted run's stream from 0 is refused
//     OFFSET_COMPACTED naming an offset above every compacted one of it
//     (not a gap); a read with the kept types returns every acknowledged
//     event of those types, without error; a read of an acknowledged
//     deleted stream is refused NOT_FOUND.
//   - (d) per sealed segment, the digests read on the nodes agree with
//     each other and with the manifests (as rule 12 (c)).
func checkCompaction(h *History, reps []Replica) CheckResult {
	c := CheckResult{Rule: 13, Name: "compaction drops only covered events, typed reads, run state kept"}
	comp := h.Compaction
	// Runs that are finished: the finishing event acknowledged, or in
	// doubt and in the final log.
	inDoubt := map[string]bool{} // values of finishing events with an unknown outcome
	for i := range h.Appends {
		if a := &h.Appends[i]; a.Outcome == Unknown && (a.Type == "TrainingFinished" || a.Type == "TrainingAborted") {
			inDoubt[a.Values[0]] = false
		}
	}
	for _, v := range reference(reps) {
		if _, ok := inDoubt[v]; ok {
			inDoubt[v] = true
		}
	}
	runs := map[string]*TrainRun{}
	for i := range comp.Runs {
		tr := &comp.Runs[i]
		switch {
		case tr.Finish != "":
			runs[tr.Stream] = tr
		case tr.Ending != "" && finishStored(h, tr, inDoubt):
			runs[tr.Stream] = tr
			c.note("runs_finished_in_doubt", 1)
		}
	}
	deleted := map[string]*DeleteOp{} // streams that may be deleted
	for i := range comp.Deletes {
		d := &comp.Deletes[i]
		c.note("deletes_"+string(d.Outcome), 1)
		if d.Outcome != Fail {
			deleted[d.Stream] = d
		}
	}
	finished := 0
	for i := range comp.Runs {
		if comp.Runs[i].Finish != "" {
			finished++
		}
	}
	c.note("runs", len(comp.Runs))
	c.note("runs_finished", finished)
	// The newest snapshot's coverage of each run: the highest any node
	// reported (coverage only grows; every rewrite planned used one).
	covers := map[string]uint64{}
	for _, rep := range reps {
		if rep.Compaction == nil {
			continue
		}
		for s, p := range rep.Compaction.Runs {
			covers[s] = max(covers[s], p.Covers)
		}
	}

	// (a) acknowledged events at compacted offsets.
	acks := okAppends(h)
	hiRun := map[string]map[string]uint64{} // node -> run -> highest compacted offset + 1
	maxRun, maxDel := 0, 0
	for _, rep := range reps {
		if rep.Err != "" {
			continue
		}
		hiRun[rep.Node] = map[string]uint64{}
		nRun, nDel := 0, 0
		for _, a := range acks {
			for i, v := range a.Values {
				off := a.First + uint64(i)
				if off < rep.First || off >= uint64(len(rep.Values)) || rep.Values[off] != compactedValue {
					continue
				}
				c.Checked++
				stream := a.streamOf(v)
				typ := a.Type
				if typ == "" {
					typ = "Appended"
				}
				tr, d := runs[stream], deleted[stream]
				switch {
				case d != nil && d.Outcome == OK && off > d.Upto:
					c.violate("%s: acknowledged %q of deleted stream %s at offset %d is compacted, above the delete's last offset %d", rep.Node, v, stream, off, d.Upto)
				case d != nil:
					nDel++
				case tr == nil:
					c.violate("%s: acknowledged %q (stream %s, type %s) at offset %d is compacted, but no policy covers it (not a finished run, not a deleted stream)", rep.Node, shortValue(v), stream, typ, off)
				case slices.Contains(comp.Keep, typ):
					c.violate("%s: acknowledged %s event of finished run %s at offset %d is compacted, but its type is kept", rep.Node, typ, stream, off)
				case off > covers[stream]:
					c.violate("%s: acknowledged %s event of finished run %s at offset %d is compacted, above its newest snapshot's coverage %d", rep.Node, typ, stream, off, covers[stream])
				default:
					nRun++
					hiRun[rep.Node][stream] = max(hiRun[rep.Node][stream], off+1)
				}
			}
		}
		c.note("compacted_run_events_"+rep.Node, nRun)
		c.note("compacted_deleted_events_"+rep.Node, nDel)
		maxRun, maxDel = max(maxRun, nRun), max(maxDel, nDel)
	}

	// (b) rewrites happened.
	c.note("rewrites_seen", len(comp.Rewrites))
	during := 0
	for _, o := range comp.Rewrites {
		if slices.ContainsFunc(h.Faults, func(f Fault) bool { return o.At >= f.Start && o.At <= f.End }) {
			during++
		}
	}
	c.note("rewrites_seen_during_faults", during)
	if maxRun == 0 {
		c.violate("no finished run's events were compacted on any replica: no run-compaction rewrite was committed, so the run tested nothing")
	}
	if maxDel == 0 {
		c.violate("no deleted stream's events are hidden on any replica: no delete took effect, so the run tested nothing")
	}

	// (c) what the nodes answer.
	keptAcks := map[string][]uint64{} // run -> acknowledged offsets of kept types
	for _, a := range acks {
		if a.Type != "" && runs[a.streamOf(a.Values[0])] != nil && slices.Contains(comp.Keep, a.Type) {
			keptAcks[a.streamOf(a.Values[0])] = append(keptAcks[a.streamOf(a.Values[0])], a.First)
		}
	}
	for _, rep := range reps {
		rc := rep.Compaction
		if rc == nil {
			c.violate("%s: no answer about the compaction workload", rep.Node)
			continue
		}
		if rc.Err != "" {
			c.violate("%s: %s", rep.Node, rc.Err)
			continue
		}
		for stream, tr := range runs {
			p, ok := rc.Runs[stream]
			if !ok {
				c.violate("%s: run %s was not probed", rep.Node, stream)
				continue
			}
			c.Checked++
			switch {
			case p.StateErr != "":
				c.violate("%s: the state of run %s could not be read: %s", rep.Node, stream, p.StateErr)
			case tr.StateHash == "":
				c.note("run_state_not_read_at_finish", 1)
			case p.StateHash != tr.StateHash:
				c.violate("%s: run %s's state hash is %.16s, it was %.16s when the run finished", rep.Node, stream, p.StateHash, tr.StateHash)
			default:
				c.note("run_states_equal", 1)
			}
			hi := hiRun[rep.Node][stream]
			switch {
			case hi > 0 && !p.Compacted:
				c.violate("%s: a read of compacted run %s from 0 was not refused OFFSET_COMPACTED (%s)", rep.Node, stream, orServed(p.ReadErr))
			case hi > 0 && p.FirstKept < hi:
				c.violate("%s: a read of run %s from 0 was refused naming %d, but it is compacted up to %d", rep.Node, stream, p.FirstKept, hi-1)
			case hi > 0:
				c.note("compacted_stream_reads_refused_typed", 1)
			case p.ReadErr != "":
				c.violate("%s: a read of run %s from 0 failed: %s", rep.Node, stream, p.ReadErr)
			}
			if p.KeptErr != "" {
				c.violate("%s: a read of run %s with the kept types failed: %s", rep.Node, stream, p.KeptErr)
				continue
			}
			for _, off := range keptAcks[stream] {
				if !slices.Contains(p.Kept, off) {
					c.violate("%s: a read of run %s with the kept types misses the acknowledged event at offset %d", rep.Node, stream, off)
				}
			}
		}
		for stream, d := range deleted {
			if d.Outcome != OK {
				continue
			}
			c.Checked++
			if got := rc.Deleted[stream]; got != "not found" {
				c.violate("%s: a read of deleted stream %s was not refused NOT_FOUND: %s", rep.Node, stream, orServed(got))
			}
		}
	}

	// (d) digests and manifests.
	checkSegmentDigests(&c, reps)
	return c
}

// finishStored reports whether the run's finishing event, appended with
// an unknown outcome, is in the final log.
func finishStored(h *History, tr *TrainRun, stored map[string]bool) bool {
	for i := range h.Appends {
		a := &h.Appends[i]
		if a.Outcome == Unknown && a.Type == tr.Ending && a.Stream == tr.Stream && stored[a.Values[0]] {
			return true
		}
	}
	return false
}

func orServed(err string) string {
	if err == "" {
		return "served"
	}
	return err
}

// shortValue cuts a long (typed, hex) value for an example line.
func shortValue(v string) string {
	if len(v) > 80 {
		return v[:80] + "..."
	}
	return v
}
