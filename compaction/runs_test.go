package compaction

import (
	"reflect"
	"testing"
	"time"
)

func TestPlanRuns(t *testing.T) {
	segs := []Segment{
		seg(0, 100, 1000, 1*hour, "run/a", "run/b"),
		seg(100, 200, 1000, 2*hour, "run/a"),
		seg(200, 300, 1000, 5*hour, "run/a", "run/c"),
	}
	now := 10 * hour
	runs := []Run{
		{Stream: "run/a", Covers: 250, LastType: "TrainingFinished", LastTimestamp: 9 * hour}, // finished
		{Stream: "run/b", Covers: 50, LastType: "BatchCompleted", LastTimestamp: 9 * hour},    // running
		{Stream: "run/c", Covers: 0, LastType: "TrainingFinished", LastTimestamp: 9 * hour},   // no snapshot
		{Stream: "run/d", Covers: 90, LastType: "BatchCompleted", LastTimestamp: 1 * hour},    // idle, not in any segment
	}
	none := func(uint64, string) uint64 { return 0 }
	got := PlanRuns(runs, segs, none, RunPolicy{Grace: 5 * time.Hour}, now)
	want := []RunThin{
		{BaseOffset: 0, Stream: "run/a", Upto: 99, Keep: DefaultKeep},
		{BaseOffset: 100, Stream: "run/a", Upto: 199, Keep: DefaultKeep},
		{BaseOffset: 200, Stream: "run/a", Upto: 250, Keep: DefaultKeep},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}
	// Done already: nothing planned; a later snapshot plans the last segment again.
	done := func(base uint64, _ string) uint64 { return min(base+99, 250) }
	if got := PlanRuns(runs, segs, done, RunPolicy{Grace: 5 * time.Hour}, now); len(got) != 0 {
		t.Fatalf("replanned %+v", got)
	}
	runs[0].Covers = 280
	if got := PlanRuns(runs, segs, done, RunPolicy{Grace: 5 * time.Hour}, now); len(got) != 1 || got[0].Upto != 280 {
		t.Fatalf("after a later snapshot: %+v", got)
	}
	// Idle past the grace period counts as finished.
	runs[1].LastTimestamp = 1 * hour
	got = PlanRuns(runs[1:2], segs, none, RunPolicy{Grace: 5 * time.Hour, Keep: []string{"X"}}, now)
	if len(got) != 1 || got[0].Stream != "run/b" || got[0].Upto != 50 || got[0].Keep[0] != "X" {
		t.Fatalf("idle run: %+v", got)
	}
}
