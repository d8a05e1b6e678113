package jepsen

import (
	"fmt"
	"slices"
	"sort"
	"time"
)

// CheckResult is the verdict of one checker.
type CheckResult struct {
	Rule       int    `json:"rule"`
	Name       string `json:"name"`
	Checked    int    `json:"checked"`
	Violations int    `json:"violations"`
	// Notes are counts that are reported but are not violations, e.g.
	// duplicates of non-idempotent retries.
	Notes    map[string]int `json:"notes,omitempty"`
	Examples []string       `json:"examples,omitempty"`
}

const maxExamples = 10

func (c *CheckResult) violate(format string, args ...any) {
	c.Violations++
	if len(c.Examples) < maxExamples {
		c.Examples = append(c.Examples, fmt.Sprintf(format, args...))
	}
}

func (c *CheckResult) note(key string, n int) {
	if c.Notes == nil {
		c.Notes = map[string]int{}
	}
	c.Notes[key] += n
}

// noteMax keeps the largest v seen for key.
func (c *CheckResult) noteMax(key string, v int) {
	if c.Notes == nil {
		c.Notes = map[string]int{}
	}
	if old, ok := c.Notes[key]; !ok || v > old {
		c.Notes[key] = v
	}
}

// Check runs every checker on a history and the final replicas; rule 10
// (fencecheck.go) only on a history of the fencing workload, rule 11
// (diskcheck.go) only on one with disk faults or DISK_FULL refusals, rule
// 12 (retcheck.go) only on one of the retention workload, rule 13
// (compcheck.go) only on one of the compaction workload, rule 14
// (tiercheck.go) only on one of the tiering workload. Offsets below a
// replica's first kept offset (compactedValue) are rule 12's alone: rules
// 1-9 skip them, as they skip offsets a final read of a tiering run was
// refused (lostValue; rule 14 judges the refusal).
func Check(h *History, reps []Replica) []CheckResult {
	L := reference(reps)
	res := []CheckResult{
		checkLost(h, reps),
		checkOneValue(h, reps),
		checkDuplicates(h, reps),
		checkUnexpected(h, L),
		checkReads(h, reps, L),
		checkRealTime(h),
		checkStale(h),
		checkSubscriptions(h, L),
		checkReplicas(reps),
	}
	if len(h.Fences) > 0 { // the fencing workload ran
		res = append(res, checkFencing(h, reps))
	}
	if hasDiskFull(h) {
		res = append(res, checkDiskFull(h, reps))
	}
	if h.Retention != nil {
		res = append(res, checkRetention(h, reps))
	}
	if h.Compaction != nil {
		res = append(res, checkCompaction(h, reps))
	}
	if h.Tiering != nil {
		res = append(res, checkTiering(h, reps))
	}
	return res
}

// Valid reports whether no checker found a violation.
func Valid(results []CheckResult) bool {
	for _, r := range results {
		if r.Violations > 0 {
			return false
		}
	}
	return true
}

// reference is the final log the history is judged against: the longest
// readable replica (rule 9 separately requires all replicas to agree).
func reference(reps []Replica) []string {
	var L []string
	for _, r := range reps {
		if r.Err == "" && len(r.Values) > len(L) {
			L = r.Values
		}
	}
	return L
}

// okAppends returns the acknowledged appends sorted by offset.
func okAppends(h *History) []*AppendOp {
	var out []*AppendOp
	for i := range h.Appends {
		if h.Appends[i].Outcome == OK {
			out = append(out, &h.Appends[i])
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].First < out[j].First })
	return out
}

// checkLost is rule 1: every acknowledged value is in every replica at the
// offset it was acknowledged with. A lost value is classified by where it
// sits among the acknowledged values of that replica: before the first one
// that survived (prefix), after the last one (postfix), or between.
func checkLost(h *History, reps []Replica) CheckResult {
	c := CheckResult{Rule: 1, Name: "acknowledged appends present at their offsets"}
	acks := okAppends(h)
	for _, rep := range reps {
		if rep.Err != "" {
			c.note("unreadable_replica_"+rep.Node, 1)
			continue
		}
		type ack struct {
			off  uint64
			v    string
			lost bool
		}
		var all []ack
		first, last := -1, -1
		for _, a := range acks {
			for i, v := range a.Values {
				off := a.First + uint64(i)
				if off < rep.First {
					c.note(rep.Node+"_below_cut", 1) // rule 12
					continue
				}
				if h.Compaction != nil && off < uint64(len(rep.Values)) && rep.Values[off] == compactedValue {
					c.note(rep.Node+"_compacted", 1) // a segment rewrite dropped it: rule 13
					continue
				}
				if h.Tiering != nil && off < uint64(len(rep.Values)) && rep.Values[off] == lostValue {
					c.note(rep.Node+"_lost_with_damaged_object", 1) // refused with its object: rule 14
					continue
				}
				lost := off >= uint64(len(rep.Values)) || rep.Values[off] != v
				if !lost {
					if first < 0 {
						first = len(all)
					}
					last = len(all)
				}
				all = append(all, ack{off, v, lost})
			}
		}
		c.Checked += len(all)
		for i, a := range all {
			if !a.lost {
				continue
			}
			where := "middle"
			switch {
			case first < 0 || i < first:
				where = "prefix"
			case i > last:
				where = "postfix"
			}
			c.note(rep.Node+"_lost_"+where, 1)
			c.violate("%s: acknowledged %q at offset %d is missing (%s)", rep.Node, a.v, a.off, where)
		}
	}
	return c
}

// checkOneValue is rule 2: acknowledgements, reads and replicas never
// disagree about the value at an offset.
func checkOneValue(h *History, reps []Replica) CheckResult {
	c := CheckResult{Rule: 2, Name: "one value per offset"}
	type seen struct{ v, src string }
	at := map[uint64]seen{}
	bad := map[uint64]bool{}
	add := func(off uint64, v, src string) {
		c.Checked++
		s, ok := at[off]
		if !ok {
			at[off] = seen{v, src}
			return
		}
		if s.v != v && !bad[off] {
			bad[off] = true
			c.violate("offset %d: %q (%s) vs %q (%s)", off, s.v, s.src, v, src)
		}
	}
	for _, a := range okAppends(h) {
		for i, v := range a.Values {
			add(a.First+uint64(i), v, "ack by "+a.Process)
		}
	}
	for i := range h.Reads {
		r := &h.Reads[i]
		for j, v := range r.Values {
			if !gapValue(v) { // rules 5, 13 and 14
				add(r.From+uint64(j), v, fmt.Sprintf("read by %s at %v", r.Process, r.Invoke))
			}
		}
	}
	for _, rep := range reps {
		for off, v := range rep.Values {
			if !gapValue(v) {
				add(uint64(off), v, "replica "+rep.Node)
			}
		}
	}
	return c
}

// origins maps every value to the append op that carried it.
func origins(h *History) map[string]*AppendOp {
	m := map[string]*AppendOp{}
	for i := range h.Appends {
		for _, v := range h.Appends[i].Values {
			m[v] = &h.Appends[i]
		}
	}
	return m
}

// checkDuplicates is rule 3: no value is stored twice. Duplicates of
// non-idempotent appends (retried without a producer id) are expected and
// only counted.
func checkDuplicates(h *History, reps []Replica) CheckResult {
	c := CheckResult{Rule: 3, Name: "no duplicates"}
	org := origins(h)
	for _, rep := range reps {
		if rep.Err != "" {
			continue
		}
		count := map[string]int{}
		for _, v := range rep.Values {
			if !gapValue(v) {
				count[v]++
			}
		}
		c.Checked += len(count)
		for v, n := range count {
			if n < 2 {
				continue
			}
			if a := org[v]; a != nil && !a.Idempotent {
				c.note("non_idempotent_duplicates_"+rep.Node, n-1)
				continue
			}
			c.violate("%s: %q stored %d times", rep.Node, v, n)
		}
	}
	return c
}

// checkUnexpected is rule 4: every stored value was appended by someone; a
// definitely failed append is never stored; an append with an unknown
// outcome is stored once or not at all; multi-value appends are atomic.
func checkUnexpected(h *History, L []string) CheckResult {
	c := CheckResult{Rule: 4, Name: "nothing unexpected"}
	org := origins(h)
	count := map[string]int{}
	for off, v := range L {
		if isSystemValue(v) {
			continue // a control record or a run's fence (rule 10)
		}
		c.Checked++
		count[v]++
		a := org[v]
		switch {
		case a == nil:
			c.violate("offset %d holds %q, which no client appended", off, v)
		case a.Outcome == Fail && count[v] == 1:
			c.violate("offset %d holds %q of an append that definitely failed (%s)", off, v, a.Err)
		}
	}
	for i := range h.Appends {
		a := &h.Appends[i]
		present := 0
		for _, v := range a.Values {
			if count[v] > 0 {
				present++
			}
		}
		if present != 0 && present != len(a.Values) {
			c.violate("append by %s at %v is partly stored: %d of %d values", a.Process, a.Invoke, present, len(a.Values))
		}
		if a.Outcome != Unknown {
			continue
		}
		switch n := count[a.Values[0]]; {
		case n == 0:
			c.note("unknown_absent", 1)
		case n == 1:
			c.note("unknown_present", 1)
		case a.Idempotent:
			c.violate("idempotent append of %q with unknown outcome stored %d times", a.Values[0], n)
		default:
			c.note("unknown_non_idempotent_duplicated", 1)
		}
	}
	return c
}

// checkReads is rule 5: the replicas have no gaps and every successful
// read from offset k returned exactly the final log from k. A client-side
// integrity error (gap, overlap, bad checksum) is a violation too.
func checkReads(h *History, reps []Replica, L []string) CheckResult {
	c := CheckResult{Rule: 5, Name: "no gaps; reads equal the final log"}
	for _, rep := range reps {
		for _, g := range rep.Gaps {
			c.violate("%s: replica has a gap at offset %d", rep.Node, g)
		}
	}
	for i := range h.Reads {
		r := &h.Reads[i]
		if r.Integrity {
			c.violate("read by %s from %d at %v: %s", r.Process, r.From, r.Invoke, r.Err)
			continue
		}
		if r.Outcome != OK {
			continue
		}
		c.Checked++
		for j, v := range r.Values {
			off := r.From + uint64(j)
			if gapValue(at(L, off)) {
				continue // read before the cut (rule 12), or lost with a damaged object (rule 14)
			}
			if off >= uint64(len(L)) || L[off] != v {
				c.violate("read by %s from %d at %v: offset %d was %q, final log has %q", r.Process, r.From, r.Invoke, off, v, at(L, off))
				break
			}
		}
	}
	return c
}

func at(L []string, off uint64) string {
	if off < uint64(len(L)) {
		return L[off]
	}
	return "<end of log>"
}

// checkRealTime is rule 6: an append acknowledged before another was
// invoked has the lower offsets.
func checkRealTime(h *History) CheckResult {
	c := CheckResult{Rule: 6, Name: "real-time order"}
	acks := okAppends(h)
	byComplete := slices.Clone(acks)
	sort.Slice(byComplete, func(i, j int) bool { return byComplete[i].Complete < byComplete[j].Complete })
	byInvoke := slices.Clone(acks)
	sort.Slice(byInvoke, func(i, j int) bool { return byInvoke[i].Invoke < byInvoke[j].Invoke })
	// Sweep: for each op in invocation order, the op with the highest
	// offset among those completed before it was invoked.
	var maxOp *AppendOp
	k := 0
	for _, b := range byInvoke {
		for k < len(byComplete) && byComplete[k].Complete < b.Invoke {
			if a := byComplete[k]; maxOp == nil || a.Last() > maxOp.Last() {
				maxOp = a
			}
			k++
		}
		c.Checked++
		if maxOp != nil && b.First <= maxOp.Last() {
			c.violate("%s's %q (offset %d, invoked %v) precedes %s's %q (offset %d, acknowledged %v)",
				b.Process, b.Values[0], b.First, b.Invoke, maxOp.Process, maxOp.Values[0], maxOp.Last(), maxOp.Complete)
		}
	}
	return c
}

// checkStale is rule 7, applied only to reads that promise freshness: a
// linearizable read sees every append acknowledged before it started; a
// read-your-writes read (MinNext set) sees the offsets below MinNext and
// every append its own process had acknowledged before it started. Plain
// local reads may be stale by design and are not checked.
func checkStale(h *History) CheckResult {
	c := CheckResult{Rule: 7, Name: "no stale reads"}
	all := newAckIndex()
	own := map[string]*ackIndex{}
	acks := okAppends(h)
	sort.Slice(acks, func(i, j int) bool { return acks[i].Complete < acks[j].Complete })
	for _, a := range acks {
		all.add(a)
		if own[a.Process] == nil {
			own[a.Process] = newAckIndex()
		}
		own[a.Process].add(a)
	}
	for i := range h.Reads {
		r := &h.Reads[i]
		if r.Outcome != OK || (!r.Linearizable && r.MinNext == 0) {
			continue
		}
		c.Checked++
		need, by := r.MinNext, "its min_next_offset"
		idx := own[r.Process]
		if r.Linearizable {
			idx = all
		}
		if a := idx.before(r.Invoke); a != nil && a.Last()+1 > need {
			need, by = a.Last()+1, fmt.Sprintf("%s's %q acknowledged at %v", a.Process, a.Values[0], a.Complete)
		}
		if r.To != 0 {
			need = min(need, r.To)
		}
		if r.From < need && r.End() < need {
			c.violate("read by %s (linearizable %v) invoked %v from %d ended at %d, but offset %d existed (%s)",
				r.Process, r.Linearizable, r.Invoke, r.From, r.End(), need-1, by)
		}
	}
	return c
}

// ackIndex answers "which acknowledged append completed before t has the
// highest offset" for acks added in completion order.
type ackIndex struct {
	complete []time.Duration
	best     []*AppendOp // best[i]: highest offset among the first i+1
}

func newAckIndex() *ackIndex { return &ackIndex{} }

func (x *ackIndex) add(a *AppendOp) {
	b := a
	if n := len(x.best); n > 0 && x.best[n-1].Last() > a.Last() {
		b = x.best[n-1]
	}
	x.complete = append(x.complete, a.Complete)
	x.best = append(x.best, b)
}

// before returns the highest-offset ack completed strictly before t.
func (x *ackIndex) before(t time.Duration) *AppendOp {
	if x == nil {
		return nil
	}
	i := sort.Search(len(x.complete), func(i int) bool { return x.complete[i] >= t })
	if i == 0 {
		return nil
	}
	return x.best[i-1]
}

// checkSubscriptions is rule 8: a subscription delivers consecutive
// offsets from its start, across resumes, each with the final log's value.
func checkSubscriptions(h *History, L []string) CheckResult {
	c := CheckResult{Rule: 8, Name: "subscriptions in order, no skips or duplicates"}
	for i := range h.Subs {
		s := &h.Subs[i]
		for _, e := range s.Integrity {
			c.violate("%s: %s", s.Process, e)
		}
		c.note("resumes", len(s.Resumes))
		want := s.Start
		for _, d := range s.Deliveries {
			c.Checked++
			switch {
			case d.Offset > want && jumpsCover(s.Jumps, want, d.Offset):
				c.note("compacted_jumps", 1) // refused OFFSET_COMPACTED at want; rule 12
			case d.Offset > want:
				c.violate("%s skipped offsets [%d, %d)", s.Process, want, d.Offset)
			case d.Offset < want:
				c.violate("%s delivered offset %d again (or out of order) after %d", s.Process, d.Offset, want-1)
			case gapValue(at(L, d.Offset)):
				// delivered before the cut (rule 12), or lost with a damaged object (rule 14)
			case d.Offset >= uint64(len(L)) || L[d.Offset] != d.Value:
				c.violate("%s delivered %q at offset %d, final log has %q", s.Process, d.Value, d.Offset, at(L, d.Offset))
			}
			want = d.Offset + 1
		}
	}
	return c
}

// jumpsCover reports whether a chain of a subscriber's OFFSET_COMPACTED
// jumps leads from from to exactly to (the cut may move again before the
// resume from the first jump's target).
func jumpsCover(jumps []Jump, from, to uint64) bool {
	for cur, steps := from, 0; steps <= len(jumps); steps++ {
		i := slices.IndexFunc(jumps, func(j Jump) bool { return j.From == cur && j.To > cur })
		if i < 0 {
			return false
		}
		if cur = jumps[i].To; cur == to {
			return true
		}
	}
	return false
}

// sameValues compares two replicas' values, lostValue matching any, and
// returns the first offset where they differ.
func sameValues(a, b []string) (uint64, bool) {
	for i := range max(len(a), len(b)) {
		va, vb := at(a, uint64(i)), at(b, uint64(i))
		if va != vb && va != lostValue && vb != lostValue {
			return uint64(i), false
		}
	}
	return 0, true
}

// checkReplicas is rule 9: every node could replay its whole log and all
// replicas are identical (length and SHA-256 of the raw batches).
func checkReplicas(reps []Replica) CheckResult {
	c := CheckResult{Rule: 9, Name: "replicas agree"}
	var ref *Replica
	for i := range reps {
		r := &reps[i]
		c.Checked++
		if r.Err != "" {
			c.violate("%s: could not replay its log: %s", r.Node, r.Err)
			continue
		}
		if ref == nil {
			ref = r
			continue
		}
		if r.Tier != nil && ref.Tier != nil && r.Hash != ref.Hash {
			// A tiering run: a node may serve a damaged object's segment
			// from a local copy it never evicted (the only copy left)
			// while the others refuse it; rule 14 judges the refusals.
			// Compare values, a refused offset matching any.
			if off, ok := sameValues(ref.Values, r.Values); !ok {
				c.violate("%s: offset %d is %q, but %s has %q (%d and %d events)", r.Node, off, at(r.Values, off), ref.Node, at(ref.Values, off), r.Length, ref.Length)
			}
			continue
		}
		if r.Length != ref.Length || r.Hash != ref.Hash || r.First != ref.First {
			c.violate("%s: %d events from %d sha256 %.16s, but %s: %d events from %d sha256 %.16s",
				r.Node, r.Length, r.First, r.Hash, ref.Node, ref.Length, ref.First, ref.Hash)
		}
	}
	return c
}
