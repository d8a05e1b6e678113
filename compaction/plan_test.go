package compaction

import (
	"strings"
	"testing"
	"time"
)

const hour = int64(time.Hour)

func seg(base, next uint64, size int64, ts int64, streams ...string) Segment {
	return Segment{BaseOffset: base, NextOffset: next, Size: size, LastTimestamp: ts, Streams: streams}
}

func TestPlanByAge(t *testing.T) {
	segs := []Segment{
		seg(0, 100, 1000, 1*hour, "run/a", "run/b"),
		seg(100, 200, 1000, 2*hour, "run/a"),
		seg(200, 300, 1000, 5*hour, "run/b"),
	}
	p := MakePlan([]Policy{{Prefix: "run/", MaxAge: 2 * time.Hour}}, segs, 5*hour)
	// Ages 4 h and 3 h go; 0 h stays.
	if p.Cut != 200 || len(p.Drops) != 2 || p.Bytes != 2000 || !strings.Contains(p.Kept, "at 200") {
		t.Fatalf("plan %+v", p)
	}
	if !strings.Contains(p.Drops[0].Reason, "older than 2h0m0s") {
		t.Fatalf("reason %q", p.Drops[0].Reason)
	}
}

func TestPlanBySize(t *testing.T) {
	segs := []Segment{
		seg(0, 10, 100, 1, "run/a"),
		seg(10, 20, 100, 2, "run/a"),
		seg(20, 30, 100, 3, "run/a"),
		seg(30, 40, 100, 4, "run/a"),
	}
	// Keep at least 250 bytes of run/: segments 0 (300 after it) and 1
	// (200 after it) ... only 0 has >= 250 after it.
	p := MakePlan([]Policy{{Prefix: "run/", MaxBytes: 250}}, segs, 10)
	if p.Cut != 10 || len(p.Drops) != 1 {
		t.Fatalf("plan %+v", p)
	}
	p = MakePlan([]Policy{{Prefix: "run/", MaxBytes: 200}}, segs, 10)
	if p.Cut != 20 || len(p.Drops) != 2 {
		t.Fatalf("plan %+v", p)
	}
}

// Bytes after a segment count only segments holding the policy's
// streams: another prefix's data does not push run/ out.
func TestPlanBySizeCountsOwnPrefix(t *testing.T) {
	segs := []Segment{
		seg(0, 10, 100, 1, "run/a", "log/x"),
		seg(10, 20, 100, 2, "log/x"),
		seg(20, 30, 100, 3, "log/x"),
	}
	pols := []Policy{{Prefix: "run/", MaxBytes: 100}, {Prefix: "log/", MaxAge: time.Nanosecond}}
	p := MakePlan(pols, segs, 1000)
	if p.Cut != 0 || len(p.Drops) != 0 || !strings.Contains(p.Kept, `"run/" keeps it`) {
		t.Fatalf("plan %+v", p)
	}
}

// A stream no policy covers keeps its segment and all after it; the
// longest prefix governs.
func TestPlanUncoveredAndLongestPrefix(t *testing.T) {
	segs := []Segment{
		seg(0, 10, 100, 1, "run/a"),
		seg(10, 20, 100, 1, "other"),
		seg(20, 30, 100, 1, "run/a"),
	}
	p := MakePlan([]Policy{{Prefix: "run/", MaxAge: time.Nanosecond}}, segs, 100)
	if p.Cut != 10 || !strings.Contains(p.Kept, "no retention policy") {
		t.Fatalf("plan %+v", p)
	}
	segs = []Segment{seg(0, 10, 100, 1, "run/keep/a", "run/b")}
	pols := []Policy{{Prefix: "run/", MaxAge: time.Nanosecond}, {Prefix: "run/keep/", MaxAge: time.Hour}}
	if p := MakePlan(pols, segs, 100); p.Cut != 0 || !strings.Contains(p.Kept, `"run/keep/" keeps it`) {
		t.Fatalf("longest prefix: plan %+v", p)
	}
	if p := MakePlan(nil, segs, 100); p.Cut != 0 || len(p.Drops) != 0 {
		t.Fatalf("no policies: plan %+v", p)
	}
}
