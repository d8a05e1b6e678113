package jepsen

import (
	"fmt"
	"sort"
	"strings"
)

// checkRetention is rule 12, applied to a run of the retention workload
// (h.Retention set): retention lost nothing no policy covered, refused
// reads below its cut in type, and left the replicas identical.
//
//	(a) every acknowledged append at or above the final first kept offset
//	    is present, exactly once, at its offset on every node; one below it
//	    may be gone only because the policy covered it: its stream has the
//	    policy's prefix. An acknowledged event of a stream no policy covers
//	    (the keeper's) is never below the cut.
//	(b) a read or a subscriber's resume refused with OFFSET_COMPACTED
//	    started below the first kept offset it named, which is above it
//	    and at most the final one; no refusal mentions compaction without
//	    the typed reason; every node, probed at the end, refuses reads
//	    below its first kept offset with OFFSET_COMPACTED naming it, and
//	    serves that offset first from it (never a silent gap).
//	    No node's first kept offset, polled during the run, goes back.
//	(c) every node reports the same first kept offset (ListRetention and
//	    SegmentDigests agree); per sealed segment, the digests of the nodes
//	    holding it agree with each other, with the digest each node's
//	    manifest recorded when it was sealed, and the replicated manifests
//	    agree; no segment could not be read; no node's fsm/log still
//	    holds a segment file below the cut (after waiting up to 10 s).
func checkRetention(h *History, reps []Replica) CheckResult {
	c := CheckResult{Rule: 12, Name: "retention: uncovered kept, typed cut, digests agree"}
	ret := h.Retention

	// The final first kept offset: every node's must be this one (c).
	var F uint64
	firstSet := false
	for _, rep := range reps {
		rr := rep.Retention
		c.Checked++
		switch {
		case rr == nil:
			c.violate("%s: no retention state reported", rep.Node)
			continue
		case rr.Err != "":
			c.violate("%s: retention state: %s", rep.Node, rr.Err)
			continue
		case rr.DigestFirst != rr.First:
			c.violate("%s: ListRetention says first kept offset %d, SegmentDigests %d", rep.Node, rr.First, rr.DigestFirst)
		}
		if !firstSet {
			F, firstSet = rr.First, true
		} else if rr.First != F {
			c.violate("%s: first kept offset %d, another node's is %d", rep.Node, rr.First, F)
		}
		if rep.First != rr.First {
			c.violate("%s: replayed from %d, but its first kept offset is %d", rep.Node, rep.First, rr.First)
		}
	}
	c.noteMax("first_kept", int(F))
	for k, n := range ret.Ops {
		c.note("operator_"+k, n)
	}
	if F == 0 {
		// The scenario exists to cut while faults run; no cut at all means
		// it tested nothing (the policy or the planner did not work).
		c.violate("no retention cut happened: the final first kept offset is 0")
	}

	// The cuts the nodes reported during the run: how many distinct ones,
	// how many first seen while a fault was active; a node's first kept
	// offset never goes back (except to 0: a wiped node restarting empty,
	// before InstallSnapshot gives it the cut).
	seen := map[uint64]bool{}
	last := map[string]uint64{}
	for _, o := range h.Cuts {
		c.Checked++
		if prev := last[o.Node]; o.First < prev && o.First != 0 {
			c.violate("%s: first kept offset went back from %d to %d at %v", o.Node, prev, o.First, o.At)
		}
		last[o.Node] = o.First
		if o.First == 0 || seen[o.First] {
			continue
		}
		seen[o.First] = true
		c.note("cuts_seen", 1)
		for _, f := range h.Faults {
			if f.Start <= o.At && o.At <= f.End {
				c.note("cuts_during_faults", 1)
				break
			}
		}
	}

	// (a) acknowledged appends.
	for _, a := range okAppends(h) {
		for i, v := range a.Values {
			off := a.First + uint64(i)
			stream := a.streamOf(v)
			c.Checked++
			if off < F {
				if !ret.covered(stream) {
					c.violate("acknowledged %q of stream %q (no policy covers it) at offset %d is below the cut %d", v, stream, off, F)
				} else {
					c.note("covered_acks_below_cut", 1)
				}
				continue
			}
			if !ret.covered(stream) {
				c.note("uncovered_acks_kept", 1)
			}
			for _, rep := range reps {
				if rep.Err != "" {
					continue // rule 9 reports it
				}
				if off >= uint64(len(rep.Values)) || rep.Values[off] != v {
					c.violate("%s: acknowledged %q at offset %d (at or above the cut %d) is missing (found %q)", rep.Node, v, off, F, at(rep.Values, off))
				}
			}
		}
	}
	org := origins(h)
	for _, rep := range reps {
		if rep.Err != "" {
			continue
		}
		count := map[string]int{}
		for _, v := range rep.Values[min(int(rep.First), len(rep.Values)):] {
			count[v]++
		}
		for v, n := range count {
			if n > 1 && !isSystemValue(v) {
				if a := org[v]; a == nil || a.Idempotent {
					c.violate("%s: %q stored %d times above the cut", rep.Node, v, n)
				}
			}
		}
	}

	// (b) typed refusals.
	for i := range h.Reads {
		r := &h.Reads[i]
		switch {
		case r.Compacted:
			c.Checked++
			c.note("reads_compacted", 1)
			if r.FirstKept <= r.From {
				c.violate("read by %s from %d at %v refused OFFSET_COMPACTED naming first kept offset %d, not above it", r.Process, r.From, r.Invoke, r.FirstKept)
			}
			if r.FirstKept > F {
				c.violate("read by %s from %d at %v was told first kept offset %d, above the final one %d", r.Process, r.From, r.Invoke, r.FirstKept, F)
			}
		case r.Outcome != OK && strings.Contains(strings.ToLower(r.Err), "compact"):
			c.violate("read by %s from %d at %v failed on compaction without the typed OFFSET_COMPACTED: %s", r.Process, r.From, r.Invoke, r.Err)
		}
	}
	for i := range h.Subs {
		s := &h.Subs[i]
		for _, j := range s.Jumps {
			c.Checked++
			c.note("subscriber_jumps", 1)
			if j.To <= j.From || j.To > F {
				c.violate("%s: resume at %d refused OFFSET_COMPACTED naming %d (final first kept offset %d)", s.Process, j.From, j.To, F)
			}
		}
	}
	for _, rep := range reps {
		rr := rep.Retention
		if rr == nil || rr.Err != "" {
			continue
		}
		probed := false
		for _, p := range rr.Probes {
			c.Checked++
			switch {
			case p.From < rr.First && !(p.Compacted && p.FirstKept == rr.First):
				c.violate("%s: read from %d (below its first kept offset %d) was not refused OFFSET_COMPACTED naming it: %s", rep.Node, p.From, rr.First, probeString(p))
			case p.From >= rr.First && !(p.Got && p.First == p.From):
				c.violate("%s: read from its first kept offset %d did not start there: %s", rep.Node, p.From, probeString(p))
			}
			probed = probed || p.From == rr.First
		}
		if !probed {
			c.violate("%s: its first kept offset %d was not probed", rep.Node, rr.First)
		}
		for _, base := range rr.Leftover {
			c.violate("%s: segment file %020d.log is below the cut %d and still on disk", rep.Node, base, rr.First)
		}
	}

	// (c) digests and manifests.
	checkSegmentDigests(&c, reps)
	return c
}

// checkSegmentDigests is the replicas-identical part of rules 12 and 13:
// per sealed segment, the digests read now on the nodes holding it agree
// with each other, with the digest each node's manifest recorded and with
// every node's manifest entry; manifests agree; no sealed segment is
// unreadable.
func checkSegmentDigests(c *CheckResult, reps []Replica) {
	type segView struct {
		node string
		s    SegmentRecord
	}
	digests := map[uint64][]segView{}
	manifests := map[uint64][]segView{}
	for _, rep := range reps {
		rr := rep.Retention
		if rr == nil || rr.Err != "" {
			continue
		}
		for _, s := range rr.Digests {
			digests[s.Base] = append(digests[s.Base], segView{rep.Node, s})
		}
		for _, s := range rr.Manifest {
			manifests[s.Base] = append(manifests[s.Base], segView{rep.Node, s})
			if s.State == "dropped" {
				c.noteMax("dropped_segments_"+rep.Node, countDropped(rr.Manifest))
			}
		}
	}
	for _, base := range sortedKeys(digests) {
		vs := digests[base]
		c.Checked++
		if len(vs) > 1 {
			c.note("common_sealed_segments", 1)
		}
		for _, v := range vs {
			if v.s.Err != "" {
				c.violate("%s: sealed segment %d could not be read: %s", v.node, base, v.s.Err)
				continue
			}
			if v.s.Digest != v.s.ManifestDigest {
				c.violate("%s: sealed segment %d reads digest %08x now, its manifest recorded %08x", v.node, base, v.s.Digest, v.s.ManifestDigest)
			}
			if ref := vs[0]; v.s.Digest != ref.s.Digest || v.s.Next != ref.s.Next || v.s.Size != ref.s.Size {
				c.violate("sealed segment %d differs: %s has [%d, %d) %d B digest %08x, %s [%d, %d) %d B digest %08x",
					base, v.node, base, v.s.Next, v.s.Size, v.s.Digest, ref.node, base, ref.s.Next, ref.s.Size, ref.s.Digest)
			}
			for _, m := range manifests[base] {
				if m.s.Digest != v.s.Digest {
					c.violate("sealed segment %d: %s reads digest %08x, %s's manifest records %08x", base, v.node, v.s.Digest, m.node, m.s.Digest)
					break
				}
			}
		}
	}
	for _, base := range sortedKeys(manifests) {
		vs := manifests[base]
		for _, v := range vs[1:] {
			if ref := vs[0]; v.s.Digest != ref.s.Digest || v.s.Next != ref.s.Next {
				c.violate("manifest entry %d differs: %s [%d, %d) %08x, %s [%d, %d) %08x", base, v.node, base, v.s.Next, v.s.Digest, ref.node, base, ref.s.Next, ref.s.Digest)
			}
		}
	}
}

func countDropped(m []SegmentRecord) int {
	n := 0
	for _, s := range m {
		if s.State == "dropped" {
			n++
		}
	}
	return n
}

func sortedKeys[V any](m map[uint64]V) []uint64 {
	keys := make([]uint64, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i] < keys[j] })
	return keys
}

func probeString(p Probe) string {
	switch {
	case p.Compacted:
		return fmt.Sprintf("OFFSET_COMPACTED naming %d", p.FirstKept)
	case p.Err != "":
		return p.Err
	case p.Got:
		return fmt.Sprintf("first record at %d", p.First)
	}
	return "no record"
}
