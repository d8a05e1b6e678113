package client

import (
	"errors"
	"slices"
	"testing"

	"github.com/tsstore/tsstore/proto/tsstorev1"
)

// resp builds a ReadResponse with an explicit next_offset.
func resp(t testing.TB, next uint64, specs ...batchSpec) *tsstorev1.ReadResponse {
	t.Helper()
	return &tsstorev1.ReadResponse{Batches: concat(t, specs...), NextOffset: next}
}

func TestFilteredThinnedBatchesAndEmptyMessages(t *testing.T) {
	offs, _, err := replayResponses(readOptions{prefix: "s"}, 0,
		// [0, 10): one thinned batch spanning [0, 2], holding 1 only.
		resp(t, 10, batchSpec{base: 0, deltas: []uint64{1}, span: 3}),
		// [10, 20): no match at all.
		resp(t, 20),
		// [20, 20): a heartbeat.
		resp(t, 20),
		// [20, 30): a gap before the batch is fine in a filtered read.
		resp(t, 30, batchSpec{base: 25, deltas: []uint64{0, 2}, span: 4}),
	)
	if err != nil {
		t.Fatal(err)
	}
	if want := []uint64{1, 25, 27}; !slices.Equal(offs, want) {
		t.Fatalf("offsets %v, want %v", offs, want)
	}
}

func TestChainingViolations(t *testing.T) {
	filtered := readOptions{prefix: "s"}
	for _, tc := range []struct {
		name string
		o    readOptions
		from uint64
		msgs []*tsstorev1.ReadResponse
		gap  *GapError // nil: want ErrProtocol
	}{
		{name: "next_offset goes backwards", o: filtered,
			msgs: []*tsstorev1.ReadResponse{resp(t, 10), resp(t, 8)}},
		{name: "batch beyond its message's next_offset", o: filtered,
			msgs: []*tsstorev1.ReadResponse{resp(t, 10, batchSpec{base: 12, n: 1})}},
		{name: "batch inside the previous message's range", o: filtered,
			msgs: []*tsstorev1.ReadResponse{resp(t, 10), resp(t, 15, batchSpec{base: 8, n: 3})}},
		{name: "first batch wholly before from", o: filtered, from: 10,
			msgs: []*tsstorev1.ReadResponse{resp(t, 12, batchSpec{base: 0, n: 3})}},
		{name: "batches out of order in a message", o: filtered,
			msgs: []*tsstorev1.ReadResponse{resp(t, 12, batchSpec{base: 6, n: 1}, batchSpec{base: 2, n: 1})}},
		{name: "record outside the filter", o: readOptions{prefix: "x"},
			msgs: []*tsstorev1.ReadResponse{resp(t, 3, batchSpec{base: 0, n: 3})}},
		{name: "unfiltered: empty message skips offsets",
			msgs: []*tsstorev1.ReadResponse{resp(t, 3, batchSpec{base: 0, n: 3}), resp(t, 6)},
			gap:  &GapError{From: 3, To: 6}},
		{name: "unfiltered: next_offset past the last batch",
			msgs: []*tsstorev1.ReadResponse{resp(t, 5, batchSpec{base: 0, n: 3})},
			gap:  &GapError{From: 3, To: 5}},
		{name: "unfiltered: message does not start at the position",
			msgs: []*tsstorev1.ReadResponse{resp(t, 3, batchSpec{base: 0, n: 3}), resp(t, 9, batchSpec{base: 6, n: 3})},
			gap:  &GapError{From: 3, To: 6}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := replayResponses(tc.o, tc.from, tc.msgs...)
			if tc.gap == nil {
				if !errors.Is(err, ErrProtocol) {
					t.Fatalf("err = %v, want ErrProtocol", err)
				}
				return
			}
			var g *GapError
			if !errors.As(err, &g) || *g != *tc.gap {
				t.Fatalf("err = %v, want %v", err, tc.gap)
			}
		})
	}
}

func TestUnfilteredHeartbeatsAreNotGaps(t *testing.T) {
	offs, _, err := replayResponses(readOptions{}, 0,
		resp(t, 0), // caught up on an empty log
		resp(t, 3, batchSpec{base: 0, n: 3}),
		resp(t, 3),
		resp(t, 5, batchSpec{base: 3, n: 2}))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(offs, span(0, 5)) {
		t.Fatalf("offsets %v, want 0..4", offs)
	}
}

func TestStreamVersionsContiguous(t *testing.T) {
	// Versions 1, 2, 3 at offsets 1, 4, 6, with gaps between batches.
	offs, evs, err := replayResponses(readOptions{stream: "s"}, 0,
		resp(t, 3, batchSpec{base: 0, deltas: []uint64{1}, span: 3, vbase: 1}),
		resp(t, 10, batchSpec{base: 4, deltas: []uint64{0, 2}, span: 3, vbase: 2}))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(offs, []uint64{1, 4, 6}) || evs[2].StreamVersion != 3 {
		t.Fatalf("offsets %v, events %+v", offs, evs)
	}
}

func TestStreamVersionJump(t *testing.T) {
	// Versions 1, 2, then 4: version 3 is missing.
	offs, _, err := replayResponses(readOptions{stream: "s"}, 0,
		resp(t, 3, batchSpec{base: 0, deltas: []uint64{0, 2}, vbase: 1}),
		resp(t, 9, batchSpec{base: 5, deltas: []uint64{0, 1}, span: 4, vbase: 4}))
	var g *StreamGapError
	if !errors.As(err, &g) || *g != (StreamGapError{Stream: "s", FromVersion: 3, ToVersion: 4, Offset: 5}) {
		t.Fatalf("err = %v, want versions [3, 4) missing at offset 5", err)
	}
	if !errors.Is(err, ErrGap) {
		t.Fatalf("%v is not ErrGap", err)
	}
	if !slices.Equal(offs, []uint64{0, 2}) {
		t.Fatalf("delivered %v before the jump, want [0 2]", offs)
	}

	// The jump inside a batch (versions 1, 2, 4): the events before it
	// are delivered.
	offs, _, err = replayResponses(readOptions{stream: "s"}, 0,
		resp(t, 4, batchSpec{base: 0, deltas: []uint64{0, 1, 3}, span: 4}))
	if !errors.As(err, &g) || g.FromVersion != 3 || g.ToVersion != 4 || !slices.Equal(offs, []uint64{0, 1}) {
		t.Fatalf("err = %v, offsets %v; want versions [3, 4) missing after 0, 1", err, offs)
	}
}

func TestStreamFromVersion(t *testing.T) {
	// The first batch holds versions 1..3; FromVersion(2) skips version 1.
	o := readOptions{stream: "s", fromVersion: 2}
	offs, evs, err := replayResponses(o, 0,
		resp(t, 5, batchSpec{base: 2, n: 3, vbase: 1}),
		resp(t, 8, batchSpec{base: 7, n: 1, vbase: 4}))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(offs, []uint64{3, 4, 7}) || evs[0].StreamVersion != 2 {
		t.Fatalf("offsets %v, events %+v", offs, evs)
	}
	// The first event delivered must be version 2.
	_, _, err = replayResponses(o, 0, resp(t, 5, batchSpec{base: 2, n: 3, vbase: 3}))
	var g *StreamGapError
	if !errors.As(err, &g) || g.FromVersion != 2 || g.ToVersion != 3 {
		t.Fatalf("err = %v, want versions [2, 3) missing", err)
	}
}

func TestStreamVersionsWithTypes(t *testing.T) {
	// With EventTypes, versions may skip but never go back.
	o := readOptions{stream: "s", types: []string{"T"}}
	offs, _, err := replayResponses(o, 0,
		resp(t, 10, batchSpec{base: 0, deltas: []uint64{0, 5}, span: 10, vbase: 1}),
		resp(t, 20, batchSpec{base: 15, n: 1, vbase: 9}))
	if err != nil || !slices.Equal(offs, []uint64{0, 5, 15}) {
		t.Fatalf("offsets %v err %v", offs, err)
	}
	_, _, err = replayResponses(o, 0,
		resp(t, 10, batchSpec{base: 0, n: 1, vbase: 5}),
		resp(t, 20, batchSpec{base: 15, n: 1, vbase: 5}))
	if !errors.Is(err, ErrProtocol) {
		t.Fatalf("repeated version: err = %v, want ErrProtocol", err)
	}
}

func TestFromTimeUnfiltered(t *testing.T) {
	// The server may start before the time (at a time-index entry): older
	// batches are skipped. It may also start after from without a gap.
	o := readOptions{fromTime: 1_000_005}
	offs, _, err := replayResponses(o, 0,
		resp(t, 7, batchSpec{base: 3, n: 2}, batchSpec{base: 5, n: 2}),
		resp(t, 9, batchSpec{base: 7, n: 2}))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(offs, span(5, 9)) {
		t.Fatalf("offsets %v, want 5..8", offs)
	}
	// Once positioned, unfiltered chaining applies again.
	_, _, err = replayResponses(o, 0,
		resp(t, 7, batchSpec{base: 5, n: 2}),
		resp(t, 10, batchSpec{base: 8, n: 2}))
	var g *GapError
	if !errors.As(err, &g) || g.From != 7 || g.To != 8 {
		t.Fatalf("err = %v, want gap [7, 8)", err)
	}
}

func TestFilteredStopsAtTo(t *testing.T) {
	offs, _, err := replayResponses(readOptions{prefix: "s", to: 12}, 0,
		resp(t, 10, batchSpec{base: 4, n: 2}),
		resp(t, 12, batchSpec{base: 11, n: 3}), // the last batch may extend past to
		resp(t, 99, batchSpec{base: 50, n: 1})) // never looked at
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(offs, []uint64{4, 5, 11}) {
		t.Fatalf("offsets %v, want [4 5 11]", offs)
	}
}

// FuzzFilteredFeed feeds arbitrary bytes and next_offsets as two messages
// of a single-stream read and checks the cursor never panics and delivers
// only increasing offsets at or after from, with versions stepping by 1.
func FuzzFilteredFeed(f *testing.F) {
	f.Add(concat(f, batchSpec{base: 0, deltas: []uint64{1}, span: 3, vbase: 1}), uint64(3),
		concat(f, batchSpec{base: 5, n: 2, vbase: 2}), uint64(9), uint64(0))
	f.Fuzz(func(t *testing.T, b1 []byte, n1 uint64, b2 []byte, n2 uint64, from uint64) {
		_, evs, _ := replayResponses(readOptions{stream: "s"}, from,
			&tsstorev1.ReadResponse{Batches: b1, NextOffset: n1},
			&tsstorev1.ReadResponse{Batches: b2, NextOffset: n2})
		for i, ev := range evs {
			if ev.Offset < from || ev.Stream != "s" ||
				(i > 0 && (ev.Offset <= evs[i-1].Offset || ev.StreamVersion != evs[i-1].StreamVersion+1)) {
				t.Fatalf("events %+v break the read's guarantees (from %d)", evs, from)
			}
		}
	})
}
