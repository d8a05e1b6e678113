package fsm

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"testing"
)

func fenceOp(run string, gen uint64) AppendOp {
	return tokenFenceOp(run, gen, "")
}

func tokenFenceOp(run string, gen uint64, token string) AppendOp {
	o := AppendOp{Events: []Event{{Stream: run, Type: FenceType, Payload: EncodeFence(Fence{Generation: gen, Reason: "attempt", Token: token})}}, Generation: gen}
	o.EventSum, o.HasEventSum = SumEvents(o.Events), true
	return o
}

func genOp(run string, gen uint64, n int) AppendOp {
	o := op("", 0, run, n)
	o.Generation = gen
	return o
}

func snapOp(t *testing.T, s *RunSnapshot) AppendOp {
	t.Helper()
	b, err := EncodeRunSnapshot(s)
	if err != nil {
		t.Fatal(err)
	}
	return AppendOp{Events: []Event{{Stream: SnapshotStream, Type: SnapshotType, Payload: b}}}
}

// Fencing: once a run is at generation g, appends of any other
// generation (older, newer, none) fail with ErrFenced and write nothing;
// a fence must name exactly g+1.
func TestRunFencing(t *testing.T) {
	p := openProc(t, t.TempDir())
	// Before the first fence the stream is no run: generation 0 appends
	// are ordinary, a generation is refused.
	mustApply(t, p, 1, appendEntry(t, 1, op("", 0, "run1", 2)))
	var fe *FencedError
	if err := mustApply(t, p, 2, appendEntry(t, 1, genOp("run1", 1, 1))).Appends[0].Err; !errors.As(err, &fe) || !fe.NotARun {
		t.Fatalf("generation for a stream that is no run: %v", err)
	}
	// Two fences to generation 1 in one entry: the second lost the race.
	rs := mustApply(t, p, 3, appendEntry(t, 2, fenceOp("run1", 1), fenceOp("run1", 1), genOp("run1", 1, 3))).Appends
	if rs[0].Err != nil || rs[2].Err != nil {
		t.Fatalf("fence and append of generation 1: %v, %v", rs[0].Err, rs[2].Err)
	}
	if !errors.As(rs[1].Err, &fe) || !fe.Fencing || fe.Current != 1 {
		t.Fatalf("second fence to 1: %v", rs[1].Err)
	}
	mustApply(t, p, 4, appendEntry(t, 3, fenceOp("run1", 2)))
	next := p.NextOffset()
	for i, o := range []AppendOp{genOp("run1", 1, 1), genOp("run1", 3, 1), op("", 0, "run1", 1), fenceOp("run1", 2), fenceOp("run1", 4)} {
		if err := mustApply(t, p, uint64(5+i), appendEntry(t, 4, o)).Appends[0].Err; !errors.Is(err, ErrFenced) {
			t.Fatalf("op %d against generation 2: %v", i, err)
		}
	}
	if p.NextOffset() != next {
		t.Fatalf("fenced appends wrote events: next offset %d -> %d", next, p.NextOffset())
	}
	if r := mustApply(t, p, 10, appendEntry(t, 5, genOp("run1", 2, 2))).Appends[0]; r.Err != nil {
		t.Fatalf("append of the live generation: %v", r.Err)
	}
	// Other streams are untouched by the run's fence, and an op that also
	// writes the run is checked for it.
	mixed := op("", 0, "other", 1)
	mixed.Events = append(mixed.Events, Event{Stream: "run1", Type: "T"})
	if err := mustApply(t, p, 11, appendEntry(t, 5, mixed)).Appends[0].Err; !errors.Is(err, ErrFenced) {
		t.Fatalf("op writing another stream and the run without generation: %v", err)
	}
	if r := mustApply(t, p, 12, appendEntry(t, 5, op("", 0, "other", 1))).Appends[0]; r.Err != nil {
		t.Fatal(r.Err)
	}
	run, ok := p.Run("run1")
	if !ok || run.Generation != 2 || run.Stream.Version != 2+1+3+1+2 {
		t.Fatalf("run1: %+v", run)
	}
}

// A fence with the token of the run's newest fence is a retry of it:
// refused (Retry) without a new generation, also within one entry.
func TestFenceTokenMakesStartRunIdempotent(t *testing.T) {
	p := openProc(t, t.TempDir())
	rs := mustApply(t, p, 1, appendEntry(t, 1, tokenFenceOp("r", 1, "a"), tokenFenceOp("r", 2, "a"))).Appends
	var fe *FencedError
	if rs[0].Err != nil || !errors.As(rs[1].Err, &fe) || !fe.Retry || fe.Current != 1 {
		t.Fatalf("retry in the same entry: %v, %v", rs[0].Err, rs[1].Err)
	}
	if err := mustApply(t, p, 2, appendEntry(t, 1, tokenFenceOp("r", 2, "a"))).Appends[0].Err; !errors.As(err, &fe) || !fe.Retry {
		t.Fatalf("retry in a later entry: %v", err)
	}
	if r := mustApply(t, p, 3, appendEntry(t, 1, tokenFenceOp("r", 2, "b"))).Appends[0]; r.Err != nil {
		t.Fatalf("another call: %v", r.Err)
	}
	if run, _ := p.Run("r"); run.Generation != 2 || run.FenceToken != "b" || run.Stream.Version != 2 {
		t.Fatalf("run %+v", run)
	}
}

// A producer's retry of an append committed before the fence is still
// answered as a duplicate (it did commit); new appends are fenced.
func TestFencedProducerRetryIsDuplicate(t *testing.T) {
	p := openProc(t, t.TempDir())
	mustApply(t, p, 1, appendEntry(t, 1, fenceOp("r", 1)))
	a := op("zombie", 1, "r", 2)
	a.Generation = 1
	first := mustApply(t, p, 2, appendEntry(t, 1, a)).Appends[0]
	mustApply(t, p, 3, appendEntry(t, 2, fenceOp("r", 2)))
	if r := mustApply(t, p, 4, appendEntry(t, 3, a)).Appends[0]; !r.Duplicate || r.FirstOffset != first.FirstOffset {
		t.Fatalf("retry: %+v", r)
	}
	b := op("zombie", 3, "r", 1)
	b.Generation = 1
	if err := mustApply(t, p, 5, appendEntry(t, 3, b)).Appends[0].Err; !errors.Is(err, ErrFenced) {
		t.Fatalf("zombie's next append: %v", err)
	}
}

func TestRunSnapshotIndex(t *testing.T) {
	p := openProc(t, t.TempDir())
	mustApply(t, p, 1, appendEntry(t, 10, fenceOp("r", 1)))
	idx := uint64(2)
	var covers []uint64
	const taken = 5*RunSnapshotMax + 40
	for i := range taken {
		res := mustApply(t, p, idx, appendEntry(t, int64(100+i), genOp("r", 1, 3))).Appends[0]
		idx++
		s := &RunSnapshot{Run: "r", FoldVersion: 1, Generation: 1, Covers: res.LastOffset, Step: uint64(10 * (i + 1)), Time: res.Timestamp, Events: uint64(3 * (i + 1))}
		if r := mustApply(t, p, idx, appendEntry(t, int64(100+i), snapOp(t, s))).Appends[0]; r.Err != nil {
			t.Fatalf("snapshot %d: %v", i, r.Err)
		}
		idx++
		covers = append(covers, res.LastOffset)
	}
	run, _ := p.Run("r")
	if len(run.Snapshots) > RunSnapshotMax || run.Taken != taken || run.Spacing < 4 {
		t.Fatalf("index holds %d snapshots, taken %d, spacing %d", len(run.Snapshots), run.Taken, run.Spacing)
	}
	// Older snapshots are evenly spread over the whole run: one per
	// Spacing, from the first multiple on, so time travel to any point
	// folds at most Spacing intervals.
	old := run.Snapshots[:len(run.Snapshots)-RunSnapshotKeep]
	if old[0].Seq != run.Spacing {
		t.Fatalf("oldest kept snapshot #%d, spacing %d", old[0].Seq, run.Spacing)
	}
	for i := 1; i < len(old); i++ {
		if old[i].Seq-old[i-1].Seq != run.Spacing {
			t.Fatalf("kept snapshots #%d and #%d: not %d apart", old[i-1].Seq, old[i].Seq, run.Spacing)
		}
	}
	if gap := run.Snapshots[len(old)].Seq - old[len(old)-1].Seq; gap > run.Spacing {
		t.Fatalf("gap of %d between the older and the newest snapshots", gap)
	}
	newest := run.Snapshots[len(run.Snapshots)-RunSnapshotKeep:]
	for i, s := range newest {
		if want := covers[len(covers)-RunSnapshotKeep+i]; s.Covers != want {
			t.Fatalf("newest snapshots are not all kept: %d covers %d, want %d", i, s.Covers, want)
		}
	}
	last := run.Snapshots[len(run.Snapshots)-1]
	for _, tc := range []struct {
		key  SnapshotKey
		x    uint64
		want uint64 // Covers; 0: none
	}{
		{ByOffset, last.Covers, last.Covers},
		{ByOffset, last.Covers - 1, run.Snapshots[len(run.Snapshots)-2].Covers},
		{ByStep, last.Step + 5, last.Covers},
		{ByStep, 9, 0},
		{ByTime, uint64(last.Time), last.Covers},
		{ByOffset, 0, 0},
	} {
		got, ok := p.RunSnapshotAt("r", tc.key, tc.x, 0)
		if (tc.want == 0) == ok || (ok && got.Covers != tc.want) {
			t.Fatalf("lookup %v <= %d: %+v %v, want covers %d", tc.key, tc.x, got, ok, tc.want)
		}
	}
	if _, ok := p.RunSnapshotAt("r", ByOffset, last.Covers, 2); ok {
		t.Fatal("found a snapshot of fold version 2")
	}
	// A snapshot that does not move forward, of an unknown run, or with a
	// malformed payload is refused and writes nothing.
	next := p.NextOffset()
	for i, o := range []AppendOp{
		snapOp(t, &RunSnapshot{Run: "r", Covers: last.Covers}),
		snapOp(t, &RunSnapshot{Run: "r", Covers: next}),
		snapOp(t, &RunSnapshot{Run: "nope", Covers: 1}),
		{Events: []Event{{Stream: SnapshotStream, Type: SnapshotType, Payload: []byte{1, 2, 3}}}},
		{Events: []Event{{Stream: "r", Type: SnapshotType, Payload: []byte{1}}}},
		{Events: []Event{{Stream: SnapshotStream, Type: "x"}}},
	} {
		if err := mustApply(t, p, idx, appendEntry(t, 999, o)).Appends[0].Err; err == nil {
			t.Fatalf("bad snapshot op %d accepted", i)
		}
		idx++
	}
	if p.NextOffset() != next {
		t.Fatal("a refused snapshot op wrote events")
	}
}

// Runs are derived from the log's records like streams: a checkpoint plus
// the log, a log alone and a Raft snapshot all rebuild the same RunInfo.
func TestRunsSurviveRestartAndSnapshot(t *testing.T) {
	dir := t.TempDir()
	p := openProc(t, dir)
	idx := uint64(1)
	apply := func(o AppendOp) AppendResult {
		t.Helper()
		r := mustApply(t, p, idx, appendEntry(t, int64(idx), o)).Appends[0]
		idx++
		if r.Err != nil {
			t.Fatal(r.Err)
		}
		return r
	}
	for run := range 3 {
		name := fmt.Sprint("run", run)
		apply(fenceOp(name, 1))
		apply(fenceOp(name, 2))
	}
	for i := range 30 {
		name := fmt.Sprint("run", i%3)
		r := apply(genOp(name, 2, 4))
		if i%2 == 0 {
			apply(snapOp(t, &RunSnapshot{Run: name, FoldVersion: 1, Covers: r.LastOffset, Step: uint64(i), Time: r.Timestamp}))
		}
		if i == 12 {
			snap, err := p.Snapshot()
			if err != nil {
				t.Fatal(err)
			}
			if err := snap.Persist(&bytes.Buffer{}); err != nil { // writes the checkpoint
				t.Fatal(err)
			}
		}
	}
	want := p.mu.state.clone()
	snap, err := p.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var stream bytes.Buffer
	if err := snap.Persist(&stream); err != nil {
		t.Fatal(err)
	}
	p.Close()
	p2 := openProc(t, dir)
	if !reflect.DeepEqual(want.Runs, p2.mu.state.Runs) {
		t.Fatalf("runs after restart differ:\n%+v\n%+v", want.Runs, p2.mu.state.Runs)
	}
	dst := openProc(t, t.TempDir())
	if err := dst.Restore(&stream); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(want.Runs, dst.mu.state.Runs) {
		t.Fatal("runs after restore differ")
	}
	// The restored replica enforces the same fence.
	if err := mustApply(t, dst, idx, appendEntry(t, 1, genOp("run1", 1, 1))).Appends[0].Err; !errors.Is(err, ErrFenced) {
		t.Fatalf("restored replica let generation 1 through: %v", err)
	}
	runs, more := dst.ListRuns("run", "run0", 1)
	if len(runs) != 1 || runs[0].Name != "run1" || !more || runs[0].Generation != 2 {
		t.Fatalf("ListRuns: %+v %v", runs, more)
	}
}

func TestFenceAndSnapshotPayloadsAreStrict(t *testing.T) {
	for _, f := range []Fence{{Generation: 7, Reason: "job 7"}, {Generation: 8, Token: "t"}} {
		if got, err := DecodeFence(EncodeFence(f)); err != nil || got != f {
			t.Fatalf("fence round trip: %+v %v", got, err)
		}
	}
	for _, b := range [][]byte{nil, {0x92, 0x00, 0xa0}, append(EncodeFence(Fence{Generation: 1}), 0), {0x94, 1, 0xa0, 0xa0, 0xa0}} {
		if _, err := DecodeFence(b); err == nil {
			t.Fatalf("fence %x decoded", b)
		}
	}
	s := &RunSnapshot{Run: "r", FoldVersion: 1, Covers: 5, Hash: []byte{1}, State: []byte{2}}
	b, _ := EncodeRunSnapshot(s)
	if got, err := DecodeRunSnapshot(b); err != nil || !reflect.DeepEqual(got, s) {
		t.Fatalf("snapshot round trip: %+v %v", got, err)
	}
	if _, err := DecodeRunSnapshot(append(b, 0)); err == nil {
		t.Fatal("trailing byte accepted")
	}
}
