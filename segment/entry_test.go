package segment

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/tsstore/tsstore/record"
)

// entry builds the batches of one Raft entry: all but the last continued.
func (m *batchMaker) entry(t testing.TB, sizes ...int) []record.Batch {
	t.Helper()
	raft := m.raft + 1
	var out []record.Batch
	for i, n := range sizes {
		m.raft = raft - 1 // every batch of the entry carries the same index
		b := m.batch(t, n)
		if i < len(sizes)-1 {
			// Re-seal the batch with the continued bit set.
			b[17] |= record.AttrContinued
			binaryPutCRC(b)
		}
		out = append(out, b)
	}
	return out
}

func binaryPutCRC(b []byte) {
	c := record.Checksum(b)
	b[12], b[13], b[14], b[15] = byte(c>>24), byte(c>>16), byte(c>>8), byte(c)
}

func TestAppendEntryOneWriteOneSegment(t *testing.T) {
	dir := t.TempDir()
	o := testOptions()
	l := mustOpen(t, dir, o)
	m := newMaker(100)
	for range 200 {
		if err := l.AppendEntry(m.entry(t, 3, 5, 2)...); err != nil {
			t.Fatal(err)
		}
	}
	segs := l.Segments()
	if len(segs) < 3 {
		t.Fatalf("%d segments: the test needs rolls", len(segs))
	}
	// No entry spans two segments: every segment ends with a complete entry.
	for _, s := range segs {
		raw, err := os.ReadFile(s.Path)
		if err != nil {
			t.Fatal(err)
		}
		bs := splitBatches(t, raw)
		if bs[len(bs)-1].Header().Continued() {
			t.Fatalf("segment %s ends inside an entry", filepath.Base(s.Path))
		}
	}
	// A continued bit in the wrong place is refused.
	bad := m.entry(t, 2, 2)
	if err := l.AppendEntry(bad[1], bad[0]); !errors.Is(err, ErrInvalidBatch) && !errors.Is(err, ErrOffsetMismatch) {
		t.Fatalf("misordered entry: %v", err)
	}
	if err := l.AppendEntry(bad[0]); !errors.Is(err, ErrInvalidBatch) {
		t.Fatalf("entry ending in a continued batch: %v", err)
	}
	l.Close()
}

func TestOpenDropsIncompleteTrailingEntry(t *testing.T) {
	dir := t.TempDir()
	l := mustOpen(t, dir, testOptions())
	m := newMaker(50)
	if err := l.AppendEntry(m.entry(t, 2, 3)...); err != nil {
		t.Fatal(err)
	}
	complete := l.NextOffset()
	torn := m.entry(t, 4, 4, 4)
	l.Close()
	// A crash wrote the first two batches of the next entry, not the third.
	segs, _ := filepath.Glob(filepath.Join(dir, "*.log"))
	f, err := os.OpenFile(segs[len(segs)-1], os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(bytes.Join([][]byte{torn[0], torn[1]}, nil))
	f.Close()

	l = mustOpen(t, dir, testOptions())
	defer l.Close()
	if l.NextOffset() != complete {
		t.Fatalf("next offset %d after recovery, want %d (incomplete entry dropped)", l.NextOffset(), complete)
	}
	if r := l.Recovery(); r.TruncatedBytes != int64(len(torn[0])+len(torn[1])) {
		t.Fatalf("recovery %+v", r)
	}
	// The entry can be written again, whole.
	if err := l.AppendEntry(torn...); err != nil {
		t.Fatal(err)
	}
}
