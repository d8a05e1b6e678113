package compaction

import (
	"fmt"
	"strings"
	"time"
)

// Policy limits the streams whose names start with Prefix. A zero MaxAge
// or MaxBytes is no limit of that kind.
type Policy struct {
	Prefix   string
	MaxAge   time.Duration
	MaxBytes int64
}

// Segment is a sealed segment still kept.
type Segment struct {
	BaseOffset, NextOffset uint64
	Size                   int64
	LastTimestamp          int64    // unix nanoseconds of its last batch
	Streams                []string // the streams with records in it
}

// Drop is one segment a plan removes and why.
type Drop struct {
	Segment Segment
	// Reason names, for the stream that held the segment longest, the
	// policy and limit that let it go.
	Reason string
}

// Plan is what retention would remove now.
type Plan struct {
	// Cut is the offset below which everything goes: the NextOffset of
	// the last segment in Drops; 0 when Drops is empty.
	Cut   uint64
	Drops []Drop
	Bytes int64 // the sum of the dropped segments' sizes
	// Kept says why the first segment not dropped stays ("" when none
	// was looked at).
	Kept string
}

// governing returns the index of the policy that governs stream (the
// longest matching prefix), or -1.
func governing(policies []Policy, stream string) int {
	best := -1
	for i, p := range policies {
		if strings.HasPrefix(stream, p.Prefix) && (best < 0 || len(p.Prefix) > len(policies[best].Prefix)) {
			best = i
		}
	}
	return best
}

// MakePlan decides the cut for segs (sealed, kept, oldest first) under
// policies at time now (unix nanoseconds).
func MakePlan(policies []Policy, segs []Segment, now int64) Plan {
	var plan Plan
	if len(policies) == 0 || len(segs) == 0 {
		return plan
	}
	// gov[i] lists the policies that govern segment i's streams (-1: a
	// stream no policy covers); after[i][k] is the bytes of the segments
	// after i holding streams of policy k.
	gov := make([][]int, len(segs))
	for i, s := range segs {
		seen := map[int]bool{}
		for _, name := range s.Streams {
			k := governing(policies, name)
			if !seen[k] {
				seen[k] = true
				gov[i] = append(gov[i], k)
			}
		}
	}
	after := make([]int64, len(policies))
	afterAt := make([][]int64, len(segs))
	for i := len(segs) - 1; i >= 0; i-- {
		afterAt[i] = append([]int64(nil), after...)
		for _, k := range gov[i] {
			if k >= 0 {
				after[k] += segs[i].Size
			}
		}
	}
	for i, s := range segs {
		reason, ok := droppable(policies, s, gov[i], afterAt[i], now)
		if !ok {
			plan.Kept = fmt.Sprintf("segment at %d stays: %s", s.BaseOffset, reason)
			break
		}
		plan.Drops = append(plan.Drops, Drop{Segment: s, Reason: reason})
		plan.Cut, plan.Bytes = s.NextOffset, plan.Bytes+s.Size
	}
	return plan
}

// droppable says whether every policy governing s lets it go, and why
// (or why not).
func droppable(policies []Policy, s Segment, gov []int, after []int64, now int64) (string, bool) {
	if len(gov) == 0 {
		return "it lists no stream", false
	}
	var why []string
	for _, k := range gov {
		if k < 0 {
			return "it holds streams no retention policy covers", false
		}
		p := policies[k]
		age := time.Duration(now - s.LastTimestamp)
		switch {
		case p.MaxAge > 0 && age > p.MaxAge:
			why = append(why, fmt.Sprintf("%q: older than %v", p.Prefix, p.MaxAge))
		case p.MaxBytes > 0 && after[k] >= p.MaxBytes:
			why = append(why, fmt.Sprintf("%q: %d bytes after it, limit %d", p.Prefix, after[k], p.MaxBytes))
		default:
			return fmt.Sprintf("policy %q keeps it (age %v, %d bytes after it)", p.Prefix, age.Round(time.Second), after[k]), false
		}
	}
	return strings.Join(why, "; "), true
}
