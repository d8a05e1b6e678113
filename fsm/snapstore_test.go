package fsm

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/hashicorp/raft"
)

func TestSnapshotStoreLinksSegmentsAndStreamsThem(t *testing.T) {
	src := openProc(t, t.TempDir())
	for i := range 300 {
		mustApply(t, src, uint64(i+1), appendEntry(t, int64(i), op("p", uint64(i*4+1), fmt.Sprint("run/", i%5), 4)))
	}
	store, err := NewSnapshotStore(t.TempDir(), 2, nil)
	if err != nil {
		t.Fatal(err)
	}
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
	// Persisting wrote the header only; the segments are hard links.
	metas, _ := store.List()
	if len(metas) != 1 {
		t.Fatalf("snapshots %d", len(metas))
	}
	st, _ := os.Stat(filepath.Join(store.dir, metas[0].ID, "state.bin"))
	if st.Size() > 64<<10 || metas[0].Size < 300*4*20 {
		t.Fatalf("state.bin %d bytes, snapshot %d bytes: segments were copied, not linked", st.Size(), metas[0].Size)
	}
	// Appends after the snapshot do not change what it streams.
	mustApply(t, src, 301, appendEntry(t, 400, op("p", 1201, "late", 3)))
	meta, rc, err := store.Open(metas[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || int64(len(b)) != meta.Size {
		t.Fatalf("read %d of %d bytes: %v", len(b), meta.Size, err)
	}
	dst := openProc(t, t.TempDir())
	if err := dst.Restore(bytes.NewReader(b)); err != nil {
		t.Fatal(err)
	}
	if dst.NextOffset() != 1200 || dst.AppliedIndex() != 300 {
		t.Fatalf("restored next offset %d applied %d", dst.NextOffset(), dst.AppliedIndex())
	}
	if _, ok := dst.StreamInfo("late"); ok {
		t.Fatal("snapshot includes an append made after it")
	}
}

func TestSnapshotStoreRetainsNewest(t *testing.T) {
	store, err := NewSnapshotStore(t.TempDir(), 2, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		sink, err := store.Create(1, uint64(10*(i+1)), 1, raft.Configuration{}, 1, nil)
		if err != nil {
			t.Fatal(err)
		}
		sink.Write([]byte("x"))
		if err := sink.Close(); err != nil {
			t.Fatal(err)
		}
	}
	cancelled, _ := store.Create(1, 99, 1, raft.Configuration{}, 1, nil)
	cancelled.Write([]byte("partial"))
	cancelled.Cancel()
	metas, _ := store.List()
	if len(metas) != 2 || metas[0].Index != 40 || metas[1].Index != 30 {
		t.Fatalf("kept %+v, want indexes 40 and 30", metas)
	}
}
