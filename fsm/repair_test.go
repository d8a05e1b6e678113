package fsm

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/tsstore/tsstore/segment"
)

// TestSnapshotRefusesDamagedSegmentAndRelinkHealsSnapshots: a processor
// whose log holds a sealed segment kept as damaged refuses to snapshot
// (ErrSegmentDamaged naming the segment); once the segment is replaced
// with the good bytes it snapshots again. A snapshot taken before the rot
// shares the rotten inode and fails to verify; Relink points it at the
// replaced file and its stream restores.
func TestSnapshotRefusesDamagedSegmentAndRelinkHealsSnapshots(t *testing.T) {
	dir := t.TempDir()
	src := openProc(t, dir)
	const entries = 2000
	for i := range entries {
		mustApply(t, src, uint64(i+1), appendEntry(t, int64(i), op("p", uint64(i*4+1), fmt.Sprint("run/", i%5), 4)))
	}
	store, err := NewSnapshotStore(t.TempDir(), 2, nil)
	if err != nil {
		t.Fatal(err)
	}
	persist := func() string {
		snap, err := src.Snapshot()
		if err != nil {
			t.Fatal(err)
		}
		sink, err := store.Create(1, snap.Index(), 3, raft.Configuration{}, 1, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := (&fsmSnapshot{snap}).Persist(sink); err != nil {
			t.Fatal(err)
		}
		return sink.ID()
	}
	id := persist()
	segs := src.log.Segments()
	seg := segs[1]
	good, err := os.ReadFile(seg.Path)
	if err != nil {
		t.Fatal(err)
	}
	if err := src.Close(); err != nil {
		t.Fatal(err)
	}
	// Rot in place, at the segment's end where Open looks.
	f, err := os.OpenFile(seg.Path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{good[len(good)-3] ^ 0x08}, int64(len(good)-3)); err != nil {
		t.Fatal(err)
	}
	f.Close()
	old, _ := os.Stat(seg.Path)

	cfg := DefaultConfig(dir)
	cfg.Segment.SegmentBytes = 64 << 10
	cfg.Segment.OpenDamaged = true
	p, err := Open(cfg)
	if err != nil {
		t.Fatalf("open with a damaged segment: %v", err)
	}
	defer p.Close()
	src = p
	if d := p.Damaged(); len(d) != 1 || d[0].BaseOffset != seg.BaseOffset {
		t.Fatalf("Damaged = %+v", d)
	}
	_, err = p.Snapshot()
	if base, ok := segment.CorruptSegment(err); !errors.Is(err, ErrSegmentDamaged) || !ok || base != seg.BaseOffset {
		t.Fatalf("Snapshot with a damaged segment: %v", err)
	}
	_, rc, err := store.Open(id)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, VerifySnapshotStream(rc)); !errors.Is(err, segment.ErrCorrupt) {
		t.Fatalf("the old snapshot shares the rotten file, but verifies: %v", err)
	}
	rc.Close()

	if err := p.WithLog(func(l *segment.Log) error { return l.ReplaceSealed(seg.BaseOffset, bytes.NewReader(good)) }); err != nil {
		t.Fatal(err)
	}
	if k, err := store.Relink(old, seg.Path); err != nil || k != 1 {
		t.Fatalf("Relink: %d links, %v", k, err)
	}
	_, rc, err = store.Open(id)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := io.ReadAll(VerifySnapshotStream(rc))
	rc.Close()
	if err != nil {
		t.Fatalf("the relinked snapshot: %v", err)
	}
	dst := openProc(t, t.TempDir())
	if err := dst.Restore(bytes.NewReader(stream)); err != nil || dst.NextOffset() != 4*entries {
		t.Fatalf("restore of the relinked snapshot: next offset %d, %v", dst.NextOffset(), err)
	}
	if tmps, _ := filepath.Glob(filepath.Join(store.dir, "*", "*.relink")); len(tmps) > 0 {
		t.Fatalf("left behind: %v", tmps)
	}
	persist() // the repaired log snapshots again
}

// TestRepairSnapshotFromLog: a snapshot received from a leader holds the
// whole stream in its state.bin; a bit rotted there (the log's own files
// are fine). RepairFromLog replaces it with a snapshot of the same index
// and term built from the log's files, which verifies and restores; the
// damaged one is gone. A log that lacks the bytes is refused.
func TestRepairSnapshotFromLog(t *testing.T) {
	src := openProc(t, t.TempDir())
	const entries = 1000
	for i := range entries {
		mustApply(t, src, uint64(i+1), appendEntry(t, int64(i), op("p", uint64(i*4+1), fmt.Sprint("run/", i%5), 4)))
	}
	snap, err := src.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var stream bytes.Buffer
	if err := snap.Persist(&stream); err != nil {
		t.Fatal(err)
	}
	store, err := NewSnapshotStore(t.TempDir(), 2, nil)
	if err != nil {
		t.Fatal(err)
	}
	sink, err := store.Create(1, snap.Index(), 3, raft.Configuration{}, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	b := stream.Bytes()
	b[len(b)-len(b)/3] ^= 0x02 // inside the segment bytes
	if _, err := sink.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := sink.Close(); err != nil {
		t.Fatal(err)
	}
	id := sink.ID()
	verify := func(id string) ([]byte, error) {
		_, rc, err := store.Open(id)
		if err != nil {
			return nil, err
		}
		defer rc.Close()
		return io.ReadAll(VerifySnapshotStream(rc))
	}
	if _, err := verify(id); !errors.Is(err, segment.ErrCorrupt) {
		t.Fatalf("the damaged snapshot verifies: %v", err)
	}
	segs := src.log.Segments()
	if _, err := store.RepairFromLog(id, segs[1:]); err == nil {
		t.Fatal("repaired from a log without its first segment")
	}
	newID, err := store.RepairFromLog(id, segs)
	if err != nil {
		t.Fatal(err)
	}
	metas, err := store.List()
	if err != nil || len(metas) != 1 || metas[0].ID != newID || metas[0].Index != snap.Index() || metas[0].Term != 3 {
		t.Fatalf("snapshots after the repair: %+v, %v", metas, err)
	}
	good, err := verify(newID)
	if err != nil {
		t.Fatalf("the repaired snapshot: %v", err)
	}
	dst := openProc(t, t.TempDir())
	if err := dst.Restore(bytes.NewReader(good)); err != nil || dst.NextOffset() != 4*entries {
		t.Fatalf("restore of the repaired snapshot: next offset %d, %v", dst.NextOffset(), err)
	}
}
