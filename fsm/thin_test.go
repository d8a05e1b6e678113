package fsm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/tsstore/tsstore/record"
	"github.com/tsstore/tsstore/segment"
)

var testKeep = []string{"CheckpointSaved", "TrainingStarted", "TrainingFinished", FenceType, SnapshotType}

// runEntries are the entries of a run "run/x" (a fence, 400 B
// BatchCompleted events, a CheckpointSaved every 50th entry) interleaved
// with another stream's events, from index 1.
func runEntries(t *testing.T, n int) [][]byte {
	t.Helper()
	entries := [][]byte{appendEntry(t, 1, fenceOp("run/x", 1))}
	for i := range n {
		o := genOp("run/x", 1, 3)
		for j := range o.Events {
			o.Events[j].Payload = bytes.Repeat([]byte{byte(i)}, 400)
		}
		if i%50 == 0 {
			o.Events[0].Type = "CheckpointSaved"
		}
		other := op("q", uint64(i+1), "other/y", 1)
		entries = append(entries, appendEntry(t, int64(i+2), o, other))
	}
	return entries
}

// waitThinned waits until every local segment of p has its manifest digest.
func waitThinned(t *testing.T, p *Processor) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		r := p.Retention()
		err := p.WithLog(func(l *segment.Log) error {
			for _, e := range r.Segments {
				if e.State != SegmentLocal {
					continue
				}
				if d, err := l.Digest(e.BaseOffset, false); err != nil || d != e.Digest {
					return fmt.Errorf("segment %d: digest %08x, manifest %08x, %v", e.BaseOffset, d, e.Digest, err)
				}
			}
			return nil
		})
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// planThins plans the thinning of run/x up to upto in every local sealed
// segment on leader and returns the commands.
func planThins(t *testing.T, leader *Processor, upto uint64) [][]byte {
	t.Helper()
	var out [][]byte
	for _, e := range leader.Retention().Segments {
		if e.State != SegmentLocal {
			continue
		}
		cmd, err := leader.PlanThin(ThinSpec{BaseOffset: e.BaseOffset, Stream: "run/x", Upto: upto, Keep: testKeep})
		if err != nil {
			t.Fatalf("plan %d: %v", e.BaseOffset, err)
		}
		out = append(out, mustEncodeCmd(t, CmdThin, &cmd))
	}
	return out
}

// checkThinned checks that run/x has only kept types at or below upto and
// everything else is still there.
func checkThinned(t *testing.T, p *Processor, upto, sealedEnd uint64) {
	t.Helper()
	var runEvents, other int
	err := p.WithLog(func(l *segment.Log) error {
		return l.Scan(0, func(b record.Batch) error {
			it := b.Records()
			var r record.Record
			for it.Next(&r) {
				switch string(r.Stream) {
				case "run/x":
					runEvents++
					if r.Offset <= upto && r.Offset < sealedEnd && string(r.Type) == "BatchCompleted" {
						return fmt.Errorf("offset %d: a BatchCompleted below %d survived", r.Offset, upto)
					}
				case "other/y":
					other++
				}
			}
			return it.Err()
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	if other != 400 {
		t.Fatalf("other/y has %d events, want 400", other)
	}
}

func TestThinReplicasIdentical(t *testing.T) {
	a, b := openProc(t, t.TempDir()), openProc(t, t.TempDir())
	entries := runEntries(t, 400)
	for i, e := range entries {
		mustApply(t, a, uint64(i+1), e)
		mustApply(t, b, uint64(i+1), e)
	}
	before := logBytes(t, a)
	stateBefore := a.mu.state.clone()
	segs := a.Retention().Segments
	if len(segs) < 3 {
		t.Fatalf("%d sealed segments", len(segs))
	}
	sealedEnd := segs[len(segs)-1].NextOffset
	upto := a.NextOffset() - 1
	idx := uint64(len(entries) + 1)
	thins := planThins(t, a, upto)
	for _, c := range thins {
		mustApply(t, a, idx, c)
		mustApply(t, b, idx, c)
		idx++
	}
	waitThinned(t, a)
	waitThinned(t, b)
	ra, rb := a.Retention(), b.Retention()
	if !reflect.DeepEqual(ra, rb) || len(ra.Thins) != len(segs) {
		t.Fatalf("manifests differ or thins missing:\n%+v\n%+v", ra, rb)
	}
	after := logBytes(t, a)
	if !bytes.Equal(after, logBytes(t, b)) {
		t.Fatal("replicas' logs differ")
	}
	t.Logf("log %d bytes before, %d after", len(before), len(after))
	if len(after) >= len(before)/2 {
		t.Fatalf("log %d bytes before, %d after", len(before), len(after))
	}
	checkThinned(t, a, upto, sealedEnd)
	// The worker counts a rewrite just after publishing it, so the last
	// count may trail the files waitThinned saw.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		st := a.ThinStats()
		if st.Rewritten == uint64(len(segs)) && st.BytesReclaimed > 0 {
			break
		}
		if st.Rewritten > uint64(len(segs)) || time.Now().After(deadline) {
			t.Fatalf("stats %+v, %d segments rewritten", st, len(segs))
		}
	}
	// The state is not touched by thinning, but for the manifest.
	stateAfter := a.mu.state.clone()
	stateAfter.Retention, stateBefore.Retention = Retention{}, Retention{}
	if !reflect.DeepEqual(stateAfter, stateBefore) {
		t.Fatal("thinning changed the state")
	}
	// A stale plan (the digest moved) is refused on every replica.
	cmd, err := a.PlanThin(ThinSpec{BaseOffset: segs[0].BaseOffset, Stream: "other/y", Upto: upto})
	if err != nil {
		t.Fatal(err)
	}
	cmd.PrevDigest++
	for _, p := range []*Processor{a, b} {
		if r := p.Apply(idx, mustEncodeCmd(t, CmdThin, &cmd)); r.Err == nil {
			t.Fatal("a stale plan was applied")
		}
	}
	// Appends go on, and a restart keeps everything once Raft has applied
	// again the entries past the durable checkpoint (a rewrite of
	// segments a checkpoint covered writes none of its own).
	last := appendEntry(t, 1000, genOp("run/x", 1, 2))
	mustApply(t, a, idx+1, last)
	dir := a.cfg.Dir
	want := logBytes(t, a)
	wantState := a.mu.state.clone()
	a.Close()
	a = openProc(t, dir)
	all := append(append(append([][]byte{}, entries...), thins...), mustEncodeCmd(t, CmdThin, &cmd), last)
	for i, e := range all {
		a.Apply(uint64(i+1), e) // as Raft does at start: what is applied already is skipped
	}
	waitThinned(t, a)
	if !bytes.Equal(logBytes(t, a), want) || !reflect.DeepEqual(a.mu.state, wantState) {
		t.Fatal("restart changed the log or the state")
	}
	if err := a.WithLog(func(l *segment.Log) error { return l.Verify(nil) }); err != nil {
		t.Fatal(err)
	}
}

// A rewrite a snapshot's pin held back is done after a restart (the
// checkpoint has the command, the file is still the old one), and a
// snapshot taken then installs elsewhere with the old file and is
// rewritten there to the same bytes.
func TestThinRestartAndRestoreMidway(t *testing.T) {
	dir := t.TempDir()
	src := openProc(t, dir)
	entries := runEntries(t, 300)
	for i, e := range entries {
		mustApply(t, src, uint64(i+1), e)
	}
	before := logBytes(t, src)
	pin, err := src.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	idx := uint64(len(entries) + 1)
	upto := src.NextOffset() - 1
	thins := planThins(t, src, upto)
	for _, c := range thins {
		mustApply(t, src, idx, c)
		idx++
	}
	// The worker took the rewrites (and wrote a checkpoint when the
	// durable one did not cover them) but may not publish while pinned.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	taken := func() int {
		src.thin.mu.Lock()
		defer src.thin.mu.Unlock()
		if src.thin.state == nil {
			return 0
		}
		return len(src.thin.state.Thins)
	}
	for taken() < len(thins) {
		if ctx.Err() != nil {
			t.Fatal("the worker never took the rewrites")
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	if !bytes.Equal(logBytes(t, src), before) {
		t.Fatal("a rewrite was published while a snapshot pinned the files")
	}
	mid, err := src.Snapshot() // state with the rewrites, files without
	if err != nil {
		t.Fatal(err)
	}
	var stream bytes.Buffer
	if err := mid.Persist(&stream); err != nil {
		t.Fatal(err)
	}
	// "Crash" with the pin held: the files stay old. Start applies again
	// what is past the durable checkpoint, as Raft does.
	src.Close()
	pin.Release()
	src = openProc(t, dir)
	for i, e := range append(append([][]byte{}, entries...), thins...) {
		src.Apply(uint64(i+1), e)
	}
	waitThinned(t, src)
	want := logBytes(t, src)
	if len(want) >= len(before)/2 {
		t.Fatalf("after restart: %d bytes, before %d", len(want), len(before))
	}

	dst := openProc(t, t.TempDir())
	if err := dst.Restore(&stream); err != nil {
		t.Fatal(err)
	}
	waitThinned(t, dst)
	if !bytes.Equal(logBytes(t, dst), want) || !reflect.DeepEqual(dst.Retention(), src.Retention()) {
		t.Fatal("the restored replica differs")
	}
	if !reflect.DeepEqual(dst.mu.state.Runs, src.mu.state.Runs) || !reflect.DeepEqual(dst.mu.state.Streams, src.mu.state.Streams) {
		t.Fatal("run index or streams differ after restore")
	}
}

func TestRetentionEncodingWithThins(t *testing.T) {
	st := newState()
	st.Retention = Retention{FirstOffset: 3, Segments: []ManifestEntry{{BaseOffset: 3, NextOffset: 9, Size: 10, Digest: 7, State: SegmentLocal}}}
	b := marshal(t, st)
	var got State
	if err := msgpack.Unmarshal(b, &got); err != nil || !reflect.DeepEqual(got.Retention, st.Retention) {
		t.Fatalf("%v %+v", err, got.Retention)
	}
	st.Retention.Thins = []ThinSpec{{BaseOffset: 3, Stream: "run/x", Upto: 8, Keep: []string{"A"}}}
	b2 := marshal(t, st)
	if len(b2) <= len(b) {
		t.Fatal("thins not encoded")
	}
	got = State{}
	if err := msgpack.Unmarshal(b2, &got); err != nil || !reflect.DeepEqual(got.Retention, st.Retention) {
		t.Fatalf("%v %+v", err, got.Retention)
	}
}

// A node whose checkpoint is gone does not rebuild its state from a
// thinned log (the state would differ from its peers'): it stops with
// ErrDataLoss.
func TestThinnedLogRefusesRebuild(t *testing.T) {
	dir := t.TempDir()
	p := openProc(t, dir)
	entries := runEntries(t, 300)
	for i, e := range entries {
		mustApply(t, p, uint64(i+1), e)
	}
	idx := uint64(len(entries) + 1)
	for _, c := range planThins(t, p, p.NextOffset()-1) {
		mustApply(t, p, idx, c)
		idx++
	}
	waitThinned(t, p)
	p.Close()
	if err := os.Remove(filepath.Join(dir, checkpointName)); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig(dir)
	cfg.Segment.SegmentBytes = 64 << 10
	if q, err := Open(cfg); !errors.Is(err, ErrDataLoss) {
		if q != nil {
			q.Close()
		}
		t.Fatalf("open without a checkpoint over a thinned log: %v", err)
	}
}

// A delete marker is replicated state: refused for a missing or system
// stream, listed streams hide the stream, and it survives a restart and
// a snapshot install; the state encodes it as Retention's 6th element.
func TestDeleteStreamState(t *testing.T) {
	dir := t.TempDir()
	p := openProc(t, dir)
	entries := runEntries(t, 50)
	for i, e := range entries {
		mustApply(t, p, uint64(i+1), e)
	}
	idx := uint64(len(entries) + 1)
	if r := p.Apply(idx, mustEncodeCmd(t, CmdDeleteStream, &DeleteStreamCommand{Stream: "nope"})); !errors.Is(r.Err, ErrStreamNotFound) {
		t.Fatalf("missing stream: %v", r.Err)
	}
	if r := p.Apply(idx+1, mustEncodeCmd(t, CmdDeleteStream, &DeleteStreamCommand{Stream: SnapshotStream})); !errors.Is(r.Err, ErrSystemStream) {
		t.Fatalf("system stream: %v", r.Err)
	}
	mustApply(t, p, idx+2, mustEncodeCmd(t, CmdDeleteStream, &DeleteStreamCommand{Stream: "other/y"}))
	st, _ := p.StreamInfo("other/y")
	d, ok := p.StreamDeleted("other/y")
	if !ok || d.Upto != st.LastOffset || d.Version != st.Version || p.StreamCompactedUpto("other/y") != d.Upto {
		t.Fatalf("marker %+v %v, stream %+v", d, ok, st)
	}
	if list, _ := p.ListStreams("", "", 10); len(list) != 1 || list[0].Name != "run/x" {
		t.Fatalf("listed %+v", list)
	}
	snap, err := p.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var stream bytes.Buffer
	if err := snap.Persist(&stream); err != nil {
		t.Fatal(err)
	}
	p.Close()
	p = openProc(t, dir)
	if got, ok := p.StreamDeleted("other/y"); !ok || got != d {
		t.Fatalf("after restart: %+v %v", got, ok)
	}
	q := openProc(t, t.TempDir())
	if err := q.Restore(&stream); err != nil {
		t.Fatal(err)
	}
	if got, ok := q.StreamDeleted("other/y"); !ok || got != d || !reflect.DeepEqual(q.Retention(), p.Retention()) {
		t.Fatalf("after restore: %+v %v", got, ok)
	}
}

// A Retention without rewrites or deletes encodes to the same bytes as
// the as_array struct of the earlier version did.
func TestRetentionEncodingUnchanged(t *testing.T) {
	type oldRetention struct {
		_msgpack      struct{} `msgpack:",as_array"`
		FirstOffset   uint64
		PolicyVersion uint64
		Policies      []RetentionPolicy
		Segments      []ManifestEntry
	}
	r := Retention{FirstOffset: 9, PolicyVersion: 2, Policies: []RetentionPolicy{{Prefix: "run/", MaxAge: 5}},
		Segments: []ManifestEntry{{BaseOffset: 9, NextOffset: 20, Size: 100, Digest: 3, LastTimestamp: 4, State: SegmentLocal}}}
	o := oldRetention{FirstOffset: r.FirstOffset, PolicyVersion: r.PolicyVersion, Policies: r.Policies, Segments: r.Segments}
	a, b := marshal(t, &r), marshal(t, &o)
	if !bytes.Equal(a, b) {
		t.Fatalf("encoding changed:\n%x\n%x", a, b)
	}
	var back Retention
	if err := msgpack.Unmarshal(b, &back); err != nil || !reflect.DeepEqual(back, r) {
		t.Fatalf("old bytes decode to %+v, %v", back, err)
	}
}
