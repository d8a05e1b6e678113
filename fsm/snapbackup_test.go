package fsm

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/hashicorp/raft"
)

// persistTo takes a snapshot of p into store and returns its id.
func persistTo(t *testing.T, p *Processor, store *SnapshotStore, term uint64) string {
	t.Helper()
	snap, err := p.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	sink, err := store.Create(1, snap.Index(), term, raft.Configuration{}, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := (&fsmSnapshot{snap}).Persist(sink); err != nil {
		t.Fatal(err)
	}
	return sink.ID()
}

// TestSnapshotStreamSurvivesReap opens a snapshot, lets two newer
// snapshots reap it (retain 2) while it is half read, and checks the
// reader still yields the exact stream: Open opens every file before it
// returns, and the open descriptors keep the unlinked files. A backup
// streamed from a live node relies on this.
func TestSnapshotStreamSurvivesReap(t *testing.T) {
	src := openProc(t, t.TempDir())
	for i := range 200 {
		mustApply(t, src, uint64(i+1), appendEntry(t, int64(i), op("p", uint64(i*4+1), fmt.Sprint("run/", i%3), 4)))
	}
	store, err := NewSnapshotStore(t.TempDir(), 2, nil)
	if err != nil {
		t.Fatal(err)
	}
	id := persistTo(t, src, store, 1)
	_, rc, err := store.Open(id)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	want := func() []byte {
		_, rc2, err := store.Open(id)
		if err != nil {
			t.Fatal(err)
		}
		defer rc2.Close()
		b, _ := io.ReadAll(rc2)
		return b
	}()
	first := make([]byte, 100)
	if _, err := io.ReadFull(rc, first); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		mustApply(t, src, uint64(201+i), appendEntry(t, int64(300+i), op("p", uint64(801+4*i), "late", 4)))
		persistTo(t, src, store, 1)
	}
	if _, err := os.Stat(filepath.Join(store.dir, id)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("snapshot %s was not reaped (stat: %v); the test did not exercise the race", id, err)
	}
	rest, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	if got := append(first, rest...); !bytes.Equal(got, want) {
		t.Fatalf("reaped snapshot streamed %d bytes, want the %d it had when opened", len(got), len(want))
	}
}

func TestReseedSnapshot(t *testing.T) {
	src := openProc(t, t.TempDir())
	for i := range 50 {
		mustApply(t, src, uint64(i+1), appendEntry(t, int64(i), op("p", uint64(i*2+1), "run/a", 2)))
	}
	mustApply(t, src, 51, mustEncode(t, CmdRegisterNode, &RegisterNodeCommand{ID: "old1", APIAddress: "10.0.0.1:7201", Incarnation: "i1"}))
	mustApply(t, src, 52, mustEncode(t, CmdRemoveNode, &RemoveNodeCommand{ID: "old2", Incarnation: "i2"}))
	if _, ok := src.Removed("old2", "i2"); !ok {
		t.Fatal("the source has no tombstone; the test does not exercise the reset")
	}
	snap, err := src.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var stream bytes.Buffer
	if err := snap.Persist(&stream); err != nil {
		t.Fatal(err)
	}
	info, again, err := ReadSnapshotInfo(bytes.NewReader(stream.Bytes()))
	if err != nil || !reflect.DeepEqual(info, SnapshotInfo{Index: 52, NextOffset: 100, Segments: 1, Version: 1}) {
		t.Fatalf("ReadSnapshotInfo: %+v, %v", info, err)
	}
	if b, _ := io.ReadAll(again); !bytes.Equal(b, stream.Bytes()) {
		t.Fatal("ReadSnapshotInfo's reader does not yield the whole stream")
	}
	if _, err := ReseedSnapshot(io.Discard, bytes.NewReader(stream.Bytes()), 51); !errors.Is(err, ErrBadSnapshot) {
		t.Fatalf("reseed below the FSM's index: %v, want ErrBadSnapshot", err)
	}
	var out bytes.Buffer
	info, err = ReseedSnapshot(&out, bytes.NewReader(stream.Bytes()), 60)
	if err != nil || info.Index != 60 || info.NextOffset != 100 {
		t.Fatalf("ReseedSnapshot: %+v, %v", info, err)
	}
	dst := openProc(t, t.TempDir())
	if err := dst.Restore(&out); err != nil {
		t.Fatal(err)
	}
	if dst.AppliedIndex() != 60 || dst.NextOffset() != 100 || len(dst.Nodes()) != 0 {
		t.Fatalf("restored applied %d next %d nodes %v; want 60, 100, none", dst.AppliedIndex(), dst.NextOffset(), dst.Nodes())
	}
	if _, ok := dst.Removed("old2", "i2"); ok {
		t.Fatal("the old cluster's removal tombstone came with the reseeded snapshot")
	}
	if !bytes.Equal(logBytes(t, dst), logBytes(t, src)) {
		t.Fatal("reseeded stream restored a different log")
	}
	// Index 60 is applied: re-applying an entry at or below it is skipped.
	if r := dst.Apply(55, appendEntry(t, 1000, op("q", 1, "run/b", 1))); !r.Skipped {
		t.Fatalf("entry below the reseeded index was applied: %+v", r)
	}
	// Truncated segment bytes are refused.
	if _, err := ReseedSnapshot(io.Discard, bytes.NewReader(stream.Bytes()[:stream.Len()-3]), 60); !errors.Is(err, ErrBadSnapshot) {
		t.Fatalf("reseed of a truncated stream: %v, want ErrBadSnapshot", err)
	}
}
