package fsm

import (
	"bytes"
	"io"
	"reflect"
	"testing"

	"github.com/tsstore/tsstore/segment"
)

// Cuts and rewrites of segments that the durable checkpoint covers
// already (the usual case: they concern old data, and snapshots write
// checkpoints) clone no state and write no checkpoint of their own; a
// crash after the files changed leaves the old checkpoint, and Raft's
// log, which keeps every entry past it, applies the entries again at
// start. The node then has the same state, manifest and bytes as one
// that did not crash.
func TestCutAndRewriteCoveredByCheckpoint(t *testing.T) {
	dir := t.TempDir()
	p := openProc(t, dir)
	entries := runEntries(t, 400)
	for i, e := range entries {
		mustApply(t, p, uint64(i+1), e)
	}
	snap, err := p.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if err := snap.Persist(io.Discard); err != nil {
		t.Fatal(err)
	}
	cpIndex := func(p *Processor) uint64 { p.cpMu.Lock(); defer p.cpMu.Unlock(); return p.cpIndex }
	covered := cpIndex(p)
	if p.CheckpointedOffset() != p.NextOffset() {
		t.Fatalf("checkpoint covers %d, log ends at %d", p.CheckpointedOffset(), p.NextOffset())
	}

	// Rewrites of every sealed segment, then a cut of the two oldest.
	idx := uint64(len(entries) + 1)
	var later [][]byte
	apply := func(e []byte) {
		t.Helper()
		if r := p.Apply(idx, e); r.Err != nil {
			t.Fatalf("entry %d: %v", idx, r.Err)
		}
		later = append(later, e)
		idx++
	}
	for _, c := range planThins(t, p, p.NextOffset()-1) {
		apply(c)
	}
	waitThinned(t, p)
	apply(mustEncodeCmd(t, CmdSetRetention, &SetRetentionCommand{Prefix: "", MaxBytes: 1}))
	cut := p.Retention().Segments[1].NextOffset
	apply(mustEncodeCmd(t, CmdCompact, &CompactCommand{Cut: cut, PolicyVersion: 1}))
	waitDropped(t, p, cut)
	if got := cpIndex(p); got != covered {
		t.Fatalf("the worker wrote a checkpoint at %d (had %d): the covered cut and rewrites cloned the state", got, covered)
	}
	want, wantState := keptBytes(t, p), p.mu.state.clone()

	// "Crash": no checkpoint since the snapshot's; files rewritten and
	// dropped. Start applies the entries past the checkpoint again.
	p.Close()
	p = openProc(t, dir)
	if p.FirstOffset() > cut {
		t.Fatalf("first offset %d after reopening, above the cut %d", p.FirstOffset(), cut)
	}
	for i, e := range later {
		if r := p.Apply(covered+1+uint64(i), e); r.Err != nil {
			t.Fatalf("entry %d again: %v", covered+1+uint64(i), r.Err)
		}
	}
	waitThinned(t, p)
	waitDropped(t, p, cut)
	if p.FirstOffset() != cut {
		t.Fatalf("first offset %d, want the cut %d", p.FirstOffset(), cut)
	}
	if !bytes.Equal(keptBytes(t, p), want) {
		t.Fatal("the log differs from the one before the crash")
	}
	gotState := p.mu.state.clone()
	if !reflect.DeepEqual(gotState, wantState) {
		t.Fatalf("the state differs after applying the entries again:\n%+v\n%+v", gotState.Retention, wantState.Retention)
	}
	if err := p.WithLog(func(l *segment.Log) error { return l.Verify(nil) }); err != nil {
		t.Fatal(err)
	}
}
