package fsm

import (
	"reflect"
	"testing"

	"github.com/tsstore/tsstore/record"
	"github.com/tsstore/tsstore/segment"
)

// TestEntrySplitsIntoStreamBatches: group commit puts several trainers'
// requests in one entry; each stream's records land in batches of their
// own, written as one entry (continued bits on all but the last).
func TestEntrySplitsIntoStreamBatches(t *testing.T) {
	dir := t.TempDir()
	p := openProc(t, dir)
	mixed := AppendOp{Events: []Event{{Stream: "a", Type: "t"}, {Stream: "b", Type: "t"}}}
	r := mustApply(t, p, 7, appendEntry(t, 1,
		op("", 0, "a", 2), op("", 0, "a", 1), op("", 0, "b", 3), mixed, mixed, op("", 0, "b", 1)))
	for i, res := range r.Appends {
		if res.Err != nil {
			t.Fatalf("op %d: %v", i, res.Err)
		}
	}
	type got struct {
		base, next uint64
		raft       uint64
		continued  bool
		streams    string
	}
	var batches []got
	p.WithLog(func(l *segment.Log) error {
		return l.Scan(0, func(b record.Batch) error {
			h := b.Header()
			g := got{h.BaseOffset, h.NextOffset(), h.RaftIndex, h.Continued(), ""}
			it := b.Records()
			var rec record.Record
			for it.Next(&rec) {
				g.streams += string(rec.Stream)
			}
			batches = append(batches, g)
			return nil
		})
	})
	want := []got{
		{0, 3, 7, true, "aaa"},
		{3, 6, 7, true, "bbb"},
		{6, 8, 7, true, "ab"},
		{8, 10, 7, true, "ab"},
		{10, 11, 7, false, "b"},
	}
	if !reflect.DeepEqual(batches, want) {
		t.Fatalf("batches\n got %+v\nwant %+v", batches, want)
	}
	// Restart: the entry is recognised as applied, state is the same.
	before := p.mu.state.clone()
	p.Close()
	p2 := openProc(t, dir)
	if r := p2.Apply(7, appendEntry(t, 1, op("", 0, "a", 1))); !r.Skipped {
		t.Fatalf("entry re-applied after restart: %+v", r)
	}
	if !reflect.DeepEqual(before, p2.mu.state) {
		t.Fatal("state differs after restart")
	}
}
