package jepsen

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// checkTiering is rule 14, applied to a run of the tiering workload
// (h.Tiering set): object-store faults lost no acknowledged event the
// store still holds, nothing corrupt was served, and the replicas agree
// on where every segment lives.
//
//	(a) the run tiered: at the end some segment is tiered and evicted on
//	    every node (a run where nothing left the local disks proves
//	    nothing), and the upload backlog drained (every node's backlog 0,
//	    every tiered segment evicted).
//	(b) every final range read (one per manifest segment, after a restart
//	    of every node: no cached block) of a segment whose object the
//	    nemesis damaged, on a node without a local copy, failed with
//	    DataLoss naming the object's key; every other range read succeeded
//	    with every offset of the range (never short or gapped without an
//	    error). The values read are rules 1-9's: every acknowledged event
//	    outside a refused range is there, with its payload.
//	(c) every node reports the same manifest (offsets, size, digest,
//	    state, object key), no upload backlog, and SegmentDigests finds
//	    every local segment's digest equal to its manifest digest, and the
//	    same on every node (`tsstore verify --cluster`).
//	(d) `tsstore verify --tiered` fails exactly on the damaged objects.
//	(e) a read during the run refused with DataLoss names a damaged
//	    object's key and came after the damage.
//
// Notes count the uploads that failed (tsstore_tier_failures_total) and
// the largest backlog during store faults, against before them.
func checkTiering(h *History, reps []Replica) CheckResult {
	c := CheckResult{Rule: 14, Name: "tiering: store faults lose nothing, serve nothing corrupt"}
	t := h.Tiering
	damaged := map[string]DamagedObject{}
	for _, d := range t.Damaged {
		damaged[d.Key] = d
		c.note("objects_"+d.Kind, 1)
	}

	// (a) and (c): manifests.
	var ref *Replica
	evictedAll := map[string]int{}
	for i := range reps {
		rep := &reps[i]
		rt := rep.Tier
		c.Checked++
		if rt == nil {
			c.violate("%s: no tiering state reported (%s)", rep.Node, rep.Err)
			continue
		}
		if rt.Err != "" {
			c.violate("%s: %s", rep.Node, rt.Err)
		}
		if rt.Backlog != 0 {
			c.violate("%s: backlog of %d segments at the end", rep.Node, rt.Backlog)
		}
		for _, s := range rt.Manifest {
			if s.State == "tiered" {
				c.note(rep.Node+"_tiered", 1)
				if !s.Local {
					evictedAll[s.Key]++
				}
			}
		}
		for _, d := range rt.Digests {
			c.Checked++
			switch {
			case d.Err != "":
				c.violate("%s: segment %d unreadable: %s", rep.Node, d.Base, d.Err)
			case d.Digest != d.ManifestDigest:
				c.violate("%s: segment %d digest %08x, manifest says %08x", rep.Node, d.Base, d.Digest, d.ManifestDigest)
			}
		}
		if ref == nil {
			ref = rep
			continue
		}
		if diff := manifestDiff(ref.Tier.Manifest, rt.Manifest); diff != "" {
			c.violate("%s and %s: manifests differ: %s", ref.Node, rep.Node, diff)
		}
		if diff := digestDiff(ref.Tier.Digests, rt.Digests); diff != "" {
			c.violate("%s and %s: segment digests differ: %s", ref.Node, rep.Node, diff)
		}
	}
	evicted := 0
	for _, n := range evictedAll {
		if n == len(reps) {
			evicted++
		}
	}
	c.noteMax("tiered_evicted_everywhere", evicted)
	if evicted == 0 {
		c.violate("no segment was tiered and evicted on every node: the run tested nothing")
	}
	if !t.Drained {
		c.violate("the tier backlog did not drain after the faults: %s", t.DrainErr)
	}

	// (b) final range reads.
	for _, rep := range reps {
		if rep.Tier == nil {
			continue
		}
		local := map[string]bool{}
		for _, s := range rep.Tier.Manifest {
			if s.Local {
				local[s.Key] = true
			}
		}
		for _, r := range rep.Tier.Ranges {
			c.Checked++
			want := int(r.To - r.From)
			d, bad := damaged[r.Key]
			switch {
			case bad && !local[r.Key] && r.Err == "":
				c.violate("%s: [%d, %d) served %d events from %s object %s", rep.Node, r.From, r.To, r.Got, d.Kind, r.Key)
			case bad && !local[r.Key] && (r.Code != "DataLoss" || !namesKey(r.Err, r.Key)):
				c.violate("%s: [%d, %d) of %s object %s refused without DataLoss naming the key: %s %s", rep.Node, r.From, r.To, d.Kind, r.Key, r.Code, r.Err)
			case bad && !local[r.Key]:
				c.note("refused_"+d.Kind, 1)
			case bad && r.Err == "" && r.Got == want:
				// A local copy it never evicted: the bytes are its own
				// (rules 1, 2 check them), not the damaged object's.
				c.note("damaged_served_from_local_copy", 1)
			case r.Err != "":
				c.violate("%s: [%d, %d) (object %q, not damaged) failed: %s", rep.Node, r.From, r.To, r.Key, r.Err)
			case r.Got != want:
				c.violate("%s: [%d, %d) returned %d of %d events without an error", rep.Node, r.From, r.To, r.Got, want)
			case r.Key != "":
				c.note("tiered_ranges_read", 1)
			}
		}
	}

	// (d) verify --tiered.
	if t.VerifyErr != "" {
		c.violate("verify --tiered: %s", t.VerifyErr)
	}
	verified := map[string]bool{}
	for _, o := range t.Verify {
		c.Checked++
		verified[o.Key] = true
		_, bad := damaged[o.Key]
		switch {
		case bad && o.OK:
			c.violate("verify --tiered passed the %s object %s", damaged[o.Key].Kind, o.Key)
		case !bad && !o.OK:
			c.violate("verify --tiered failed the undamaged object %s: %s", o.Key, o.Err)
		}
	}
	for _, d := range t.Damaged {
		if t.VerifyErr == "" && !verified[d.Key] {
			c.violate("verify --tiered did not check the %s object %s", d.Kind, d.Key)
		}
	}

	// (e) refusals during the run.
	for i := range h.Reads {
		r := &h.Reads[i]
		if !strings.Contains(r.Err, "DataLoss") && !strings.Contains(r.Err, "data loss") {
			continue
		}
		c.Checked++
		ok := false
		for _, d := range t.Damaged {
			if namesKey(r.Err, d.Key) && r.Complete >= d.At {
				ok = true
				break
			}
		}
		if !ok {
			c.violate("read by %s from %d at %v refused, naming no damaged object: %s", r.Process, r.From, r.Invoke, r.Err)
		} else {
			c.note("run_reads_refused", 1)
		}
	}

	noteTierMetrics(&c, h)
	c.note("proxy_requests", int(t.ProxyRequests))
	c.note("proxy_500s", int(t.ProxyInjected))
	c.note("proxy_502s_store_down", int(t.ProxyDown))
	return c
}

// manifestDiff describes the first difference of two manifests.
func manifestDiff(a, b []TierSegment) string {
	key := func(s TierSegment) string {
		return fmt.Sprintf("[%d, %d) %d bytes %08x %s %s", s.Base, s.Next, s.Size, s.Digest, s.State, s.Key)
	}
	for i := range max(len(a), len(b)) {
		switch {
		case i >= len(a):
			return "only the second has " + key(b[i])
		case i >= len(b):
			return "only the first has " + key(a[i])
		case key(a[i]) != key(b[i]):
			return key(a[i]) + " vs " + key(b[i])
		}
	}
	return ""
}

// digestDiff compares the digests of the segments both nodes report.
func digestDiff(a, b []TierDigest) string {
	m := map[uint64]uint32{}
	for _, d := range a {
		m[d.Base] = d.Digest
	}
	for _, d := range b {
		if x, ok := m[d.Base]; ok && x != d.Digest {
			return fmt.Sprintf("segment %d: %08x vs %08x", d.Base, x, d.Digest)
		}
	}
	return ""
}

// noteTierMetrics notes, from the polled metrics, how many tiering
// attempts failed in all and while a store fault was active (or within 2 s
// after: the backoff), in all and per kind (the first fault whose window
// holds the sample), the largest backlog before any store fault and
// during them (in all and per kind), and the last backlog seen.
func noteTierMetrics(c *CheckResult, h *History) {
	type window struct {
		from, to time.Duration
		kind     string
	}
	var windows []window
	firstStore := time.Duration(-1)
	for _, f := range h.Faults {
		if strings.HasPrefix(f.Kind, "store-") {
			windows = append(windows, window{f.Start, f.End + 2*time.Second, f.Kind})
			if firstStore < 0 || f.Start < firstStore {
				firstStore = f.Start
			}
		}
	}
	sort.Slice(windows, func(i, j int) bool { return windows[i].from < windows[j].from })
	// storeFault is the kind of the first store fault whose window holds
	// at ("" if none).
	storeFault := func(at time.Duration) string {
		for _, w := range windows {
			if w.from <= at && at <= w.to {
				return w.kind
			}
		}
		return ""
	}
	samples := append([]TierSample(nil), h.Tiering.Samples...)
	sort.SliceStable(samples, func(i, j int) bool { return samples[i].At < samples[j].At })
	last := map[string]TierSample{}
	var lastAt time.Duration
	for _, s := range samples {
		p, seen := last[s.Node]
		inc := s.Failures - p.Failures
		if !seen || s.Failures < p.Failures { // counted since the process started
			inc = s.Failures
		}
		kind := storeFault(s.At)
		if inc > 0 {
			c.note("upload_failures", int(inc))
			if kind != "" {
				c.note("upload_failures_during_store_faults", int(inc))
				c.note("upload_failures_during_"+kind, int(inc))
			}
		}
		switch {
		case firstStore < 0 || s.At < firstStore:
			c.noteMax("backlog_max_before_store_faults", int(s.Backlog))
		case kind != "":
			c.noteMax("backlog_max_during_store_faults", int(s.Backlog))
			c.noteMax("backlog_max_during_"+kind, int(s.Backlog))
		}
		c.noteMax("evicted_max", int(s.Evicted))
		last[s.Node] = s
		lastAt = max(lastAt, s.At)
	}
	end := 0
	for _, s := range last {
		if s.At >= lastAt-time.Second {
			end = max(end, int(s.Backlog))
		}
	}
	c.noteMax("backlog_at_end", end)
}
