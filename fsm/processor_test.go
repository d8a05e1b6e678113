package fsm

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/tsstore/tsstore/record"
	"github.com/tsstore/tsstore/segment"
)

func openProc(t *testing.T, dir string) *Processor {
	t.Helper()
	cfg := DefaultConfig(dir)
	cfg.Segment.SegmentBytes = 64 << 10
	p, err := Open(cfg)
	if err != nil {
		t.Fatalf("open %s: %v", dir, err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func appendEntry(t testing.TB, ts int64, ops ...AppendOp) []byte {
	t.Helper()
	b, err := Encode(CmdAppend, &AppendCommand{Timestamp: ts, Ops: ops})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func op(producer string, seq uint64, stream string, n int) AppendOp {
	o := AppendOp{ProducerID: producer, Seq: seq}
	for i := range n {
		o.Events = append(o.Events, Event{Stream: stream, Type: "BatchCompleted", Payload: fmt.Appendf(nil, "%s-%d", producer, int(seq)+i)})
	}
	return o
}

func mustApply(t testing.TB, p *Processor, index uint64, data []byte) *ApplyResult {
	t.Helper()
	r := p.Apply(index, data)
	if r.Err != nil {
		t.Fatalf("apply %d: %v", index, r.Err)
	}
	return r
}

// logBytes returns every batch of the log, concatenated.
func logBytes(t testing.TB, p *Processor) []byte {
	t.Helper()
	var out []byte
	err := p.WithLog(func(l *segment.Log) error {
		return l.Scan(0, func(b record.Batch) error { out = append(out, b...); return nil })
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestApplyAssignsContiguousOffsetsAndVersions(t *testing.T) {
	p := openProc(t, t.TempDir())
	r := mustApply(t, p, 1, appendEntry(t, 100, op("p1", 1, "run/a", 3), op("p2", 1, "run/b", 2)))
	want := []AppendResult{
		{FirstOffset: 0, LastOffset: 2, RaftIndex: 1, Timestamp: 100, StreamVersions: map[string]uint64{"run/a": 3}},
		{FirstOffset: 3, LastOffset: 4, RaftIndex: 1, Timestamp: 100, StreamVersions: map[string]uint64{"run/b": 2}},
	}
	if !reflect.DeepEqual(r.Appends, want) {
		t.Fatalf("results %+v, want %+v", r.Appends, want)
	}
	r = mustApply(t, p, 2, appendEntry(t, 50, op("p1", 4, "run/a", 1)))
	if got := r.Appends[0]; got.FirstOffset != 5 || got.StreamVersions["run/a"] != 4 || got.Timestamp != 100 {
		t.Fatalf("second append %+v: want offset 5, version 4, timestamp clamped to 100", got)
	}
	if p.NextOffset() != 6 || p.AppliedIndex() != 2 {
		t.Fatalf("next offset %d applied %d", p.NextOffset(), p.AppliedIndex())
	}
	st, _ := p.StreamInfo("run/a")
	if st.Version != 4 || st.FirstOffset != 0 || st.LastOffset != 5 {
		t.Fatalf("stream state %+v", st)
	}
}

func TestProducerDedup(t *testing.T) {
	p := openProc(t, t.TempDir())
	first := mustApply(t, p, 1, appendEntry(t, 1, op("p", 1, "s", 2))).Appends[0]

	// A retry in a later entry returns the original offsets, writes nothing.
	r := mustApply(t, p, 2, appendEntry(t, 2, op("p", 1, "s", 2))).Appends[0]
	if !r.Duplicate || r.FirstOffset != first.FirstOffset || r.LastOffset != first.LastOffset || r.StreamVersions["s"] != 2 {
		t.Fatalf("retry result %+v, original %+v", r, first)
	}
	// A retry coalesced into the same entry as its original.
	r2 := mustApply(t, p, 3, appendEntry(t, 3, op("p", 3, "s", 1), op("p", 3, "s", 1))).Appends
	if r2[1].FirstOffset != r2[0].FirstOffset || !r2[1].Duplicate {
		t.Fatalf("in-entry retry %+v", r2)
	}
	if p.NextOffset() != 3 {
		t.Fatalf("next offset %d after retries, want 3", p.NextOffset())
	}
	// A gap is refused with the expected sequence.
	var gap *SequenceGapError
	err := mustApply(t, p, 4, appendEntry(t, 4, op("p", 9, "s", 1))).Appends[0].Err
	if !errors.As(err, &gap) || gap.Expected != 4 || gap.Got != 9 {
		t.Fatalf("gap error %v", err)
	}
	// Push the first append out of the dedup window: its retry is refused,
	// not written again.
	for i := range uint64(DedupWindows) {
		mustApply(t, p, 5+i, appendEntry(t, 5, op("p", 4+i, "s", 1)))
	}
	next := p.NextOffset()
	err = mustApply(t, p, 100, appendEntry(t, 6, op("p", 1, "s", 2))).Appends[0].Err
	if !errors.Is(err, ErrDuplicateSequence) || p.NextOffset() != next {
		t.Fatalf("old retry: %v, next offset %d -> %d", err, next, p.NextOffset())
	}
}

func TestExpectedVersions(t *testing.T) {
	p := openProc(t, t.TempDir())
	withExpect := func(o AppendOp, x ...Expectation) AppendOp { o.Expect = x; return o }
	r := mustApply(t, p, 1, appendEntry(t, 1,
		withExpect(op("", 0, "s", 1), Expectation{Stream: "s", Kind: ExpectNoStream}),
		withExpect(op("", 0, "s", 1), Expectation{Stream: "s", Kind: ExpectNoStream}),
		withExpect(op("", 0, "s", 1), Expectation{Stream: "s", Kind: ExpectExact, Version: 1}),
	)).Appends
	var wev *WrongExpectedVersionError
	if r[0].Err != nil || !errors.As(r[1].Err, &wev) || wev.Actual != 1 || r[2].Err != nil {
		t.Fatalf("results %+v", r)
	}
	if p.NextOffset() != 2 {
		t.Fatalf("next offset %d, want 2", p.NextOffset())
	}
}

func TestRestartIsIdempotentByIndex(t *testing.T) {
	dir := t.TempDir()
	p := openProc(t, dir)
	var entries [][]byte
	for i := range 50 {
		entries = append(entries, appendEntry(t, int64(i), op("p", uint64(i*3+1), "s", 3)))
		mustApply(t, p, uint64(i+1), entries[i])
	}
	before := logBytes(t, p)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	p2 := openProc(t, dir)
	// Raft replays everything after its last snapshot (here: all of it).
	for i, e := range entries {
		if r := p2.Apply(uint64(i+1), e); !r.Skipped {
			t.Fatalf("entry %d re-applied after restart: %+v", i+1, r)
		}
	}
	if !bytes.Equal(before, logBytes(t, p2)) {
		t.Fatal("log changed by replay after restart")
	}
	r := mustApply(t, p2, 51, appendEntry(t, 99, op("p", 151, "s", 1))).Appends[0]
	if r.Err != nil || r.FirstOffset != 150 {
		t.Fatalf("append after restart %+v (producer state must survive the restart)", r)
	}
}

func TestSnapshotRestoreRoundTrip(t *testing.T) {
	src := openProc(t, t.TempDir())
	for i := range 200 {
		mustApply(t, src, uint64(i+1), appendEntry(t, int64(i), op(fmt.Sprint("p", i%3), uint64(i/3*5+1), fmt.Sprint("run/", i%7), 5)))
	}
	mustApply(t, src, 201, mustEncode(t, CmdRegisterNode, &RegisterNodeCommand{ID: "n1", APIAddress: "127.0.0.1:1"}))
	snap, err := src.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var stream bytes.Buffer
	if err := snap.Persist(&stream); err != nil {
		t.Fatal(err)
	}
	dst := openProc(t, t.TempDir())
	mustApply(t, dst, 1, appendEntry(t, 1, op("other", 1, "x", 1))) // replaced by the restore
	if err := dst.Restore(&stream); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(logBytes(t, src), logBytes(t, dst)) {
		t.Fatal("restored log differs")
	}
	if !reflect.DeepEqual(src.mu.state, dst.mu.state) {
		t.Fatal("restored state differs")
	}
	if dst.AppliedIndex() != 201 || dst.Nodes()["n1"] != "127.0.0.1:1" {
		t.Fatalf("applied %d nodes %v", dst.AppliedIndex(), dst.Nodes())
	}
	// Entries after the snapshot apply normally; those before are skipped.
	if r := dst.Apply(150, appendEntry(t, 1, op("p0", 1, "s", 1))); !r.Skipped {
		t.Fatalf("entry below snapshot index applied: %+v", r)
	}
}

func TestRestoreRejectsCorruptStream(t *testing.T) {
	src := openProc(t, t.TempDir())
	for i := range 20 {
		mustApply(t, src, uint64(i+1), appendEntry(t, 1, op("", 0, "s", 10)))
	}
	snap, _ := src.Snapshot()
	var stream bytes.Buffer
	snap.Persist(&stream)
	b := stream.Bytes()
	b[len(b)-10] ^= 0xff // a flipped bit in the last batch
	dst := openProc(t, t.TempDir())
	mustApply(t, dst, 1, appendEntry(t, 1, op("", 0, "keep", 1)))
	if err := dst.Restore(bytes.NewReader(b)); !errors.Is(err, ErrBadSnapshot) {
		t.Fatalf("restore of corrupt stream: %v", err)
	}
	if _, ok := dst.StreamInfo("keep"); !ok || dst.NextOffset() != 1 {
		t.Fatal("failed restore changed the existing state")
	}
	if err := dst.Restore(bytes.NewReader(b[:len(b)/2])); !errors.Is(err, ErrBadSnapshot) {
		t.Fatalf("restore of truncated stream: %v", err)
	}
}

// applyCheckpointed applies n entries over 4 streams to a processor of its
// own in dir, persisting a snapshot (and so a checkpoint) after entry at,
// closes it and returns its state.
func applyCheckpointed(t *testing.T, dir string, n, at int) *State {
	t.Helper()
	p := openProc(t, dir)
	for i := range n {
		mustApply(t, p, uint64(i+1), appendEntry(t, int64(i), op("p", uint64(i*2+1), fmt.Sprint("s", i%4), 2)))
		if i == at {
			snap, err := p.Snapshot()
			if err != nil {
				t.Fatal(err)
			}
			if err := snap.Persist(&bytes.Buffer{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	st := p.mu.state.clone()
	p.Close()
	return st
}

func TestCheckpointThenReopenRebuildsSameState(t *testing.T) {
	dir := t.TempDir()
	want := applyCheckpointed(t, dir, 100, 40)
	p2 := openProc(t, dir)
	if !reflect.DeepEqual(want, p2.mu.state) {
		t.Fatal("state rebuilt from checkpoint + log differs from the state before restart")
	}
	if p2.AppliedIndex() != 100 {
		t.Fatalf("applied %d", p2.AppliedIndex())
	}
}

// A damaged checkpoint is moved aside and the state rebuilt from the
// whole log: the node opens with the same state instead of failing at
// every restart.
func TestDamagedCheckpointIsRebuiltFromTheLog(t *testing.T) {
	dir := t.TempDir()
	want := applyCheckpointed(t, dir, 60, 30)
	cpPath := filepath.Join(dir, checkpointName)
	b, err := os.ReadFile(cpPath)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x40
	if err := os.WriteFile(cpPath, b, 0o644); err != nil {
		t.Fatal(err)
	}
	p2 := openProc(t, dir)
	if !reflect.DeepEqual(want.Streams, p2.mu.state.Streams) || !reflect.DeepEqual(want.Producers, p2.mu.state.Producers) ||
		want.NextOffset != p2.mu.state.NextOffset || p2.AppliedIndex() != 60 {
		t.Fatalf("state rebuilt from the log differs (applied %d)", p2.AppliedIndex())
	}
	if aside, _ := filepath.Glob(cpPath + ".damaged-*"); len(aside) != 1 {
		t.Fatalf("the damaged checkpoint was not kept aside: %v", aside)
	}
}

func TestOpenDetectsLostSegmentData(t *testing.T) {
	dir := t.TempDir()
	p := openProc(t, dir)
	big := AppendOp{}
	for range 50 {
		big.Events = append(big.Events, Event{Stream: "s", Type: "t", Payload: make([]byte, 200)})
	}
	for i := range 30 {
		mustApply(t, p, uint64(i+1), appendEntry(t, 1, big))
	}
	snap, _ := p.Snapshot()
	snap.Persist(&bytes.Buffer{})
	p.Close()
	// Lose the segment files the checkpoint vouched for.
	logs, _ := filepath.Glob(filepath.Join(dir, "log", "*.log"))
	if len(logs) < 3 {
		t.Fatalf("%d segments; the test needs several", len(logs))
	}
	for _, f := range logs[1:] {
		os.Remove(f)
	}
	cfg := DefaultConfig(dir)
	cfg.Segment.SegmentBytes = 64 << 10
	if _, err := Open(cfg); !errors.Is(err, ErrDataLoss) {
		t.Fatalf("open after losing segments: %v, want ErrDataLoss", err)
	}
}

func TestUnknownCommandStopsApplying(t *testing.T) {
	p := openProc(t, t.TempDir())
	if r := p.Apply(1, []byte{0x7f, 1, 2}); !errors.Is(r.Err, ErrStorageFailed) {
		t.Fatalf("unknown command: %+v", r)
	}
	if r := p.Apply(2, appendEntry(t, 1, op("", 0, "s", 1))); r.Err == nil {
		t.Fatal("processor kept applying after an unknown command")
	}
}

func TestInvalidOpsAreRejectedNotFatal(t *testing.T) {
	p := openProc(t, t.TempDir())
	bad := []AppendOp{
		{}, // empty
		{Events: []Event{{Stream: "", Type: "t"}}}, // no stream
		{Events: []Event{{Stream: "s s", Type: "t"}}},
		{Events: []Event{{Stream: "s", Type: ""}}},
		{ProducerID: "p", Seq: 0, Events: []Event{{Stream: "s", Type: "t"}}},
	}
	r := mustApply(t, p, 1, appendEntry(t, 1, append(bad, op("", 0, "ok", 1))...)).Appends
	for i := range bad {
		if !errors.Is(r[i].Err, ErrInvalidEvent) {
			t.Errorf("op %d: %v, want ErrInvalidEvent", i, r[i].Err)
		}
	}
	if r[len(bad)].Err != nil || p.NextOffset() != 1 {
		t.Fatalf("valid op in the same entry: %+v", r[len(bad)])
	}
}

func mustEncode(t *testing.T, ct CommandType, v any) []byte {
	t.Helper()
	b, err := Encode(ct, v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestListStreams(t *testing.T) {
	p := openProc(t, t.TempDir())
	for i, s := range []string{"run/b", "run/a", "other", "run/c", "run/a"} {
		mustApply(t, p, uint64(i+1), appendEntry(t, 1, op("", 0, s, 1)))
	}
	got, more := p.ListStreams("run/", "", 2)
	if len(got) != 2 || got[0].Name != "run/a" || got[0].Version != 2 || got[1].Name != "run/b" || !more {
		t.Fatalf("page 1: %+v more=%v", got, more)
	}
	got, more = p.ListStreams("run/", got[1].Name, 2)
	if len(got) != 1 || got[0].Name != "run/c" || more {
		t.Fatalf("page 2: %+v more=%v", got, more)
	}
	if got, _ := p.ListStreams("nope", "", 10); len(got) != 0 {
		t.Fatalf("unknown prefix: %+v", got)
	}
	mustApply(t, p, 9, appendEntry(t, 1, op("", 0, "run/0", 1)))
	if got, _ := p.ListStreams("run/", "", 10); len(got) != 4 || got[0].Name != "run/0" {
		t.Fatalf("new stream not listed first: %+v", got)
	}
}
