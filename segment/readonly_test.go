package segment

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// snapshotDir returns every file's name and bytes under dir.
func snapshotDir(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = b
	}
	return out
}

func sameDir(a, b map[string][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if !bytes.Equal(v, b[k]) {
			return false
		}
	}
	return true
}

// TestReadOnlyVerifyFindsCorruptionWithoutChanges: a log opened through
// ReadOnlyFS verifies, reports a flipped byte in a sealed segment by file
// and position, refuses to repair a torn tail, and never changes a file.
func TestReadOnlyVerifyFindsCorruptionWithoutChanges(t *testing.T) {
	dir := t.TempDir()
	l := mustOpen(t, dir, testOptions())
	batches := fill(t, l, newMaker(100), 60, 5)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	before := snapshotDir(t, dir)
	ro := testOptions()
	ro.FS = ReadOnlyFS{}
	l, err := Open(dir, ro)
	if err != nil {
		t.Fatalf("read-only open of a clean log: %v", err)
	}
	if err := l.Verify(nil); err != nil {
		t.Fatalf("verify of a clean log: %v", err)
	}
	l.Close()
	if !sameDir(before, snapshotDir(t, dir)) {
		t.Fatal("a read-only open, verify and close changed the directory")
	}

	// A flipped byte inside the second batch of the first (sealed) segment.
	first := filepath.Join(dir, FileName(0))
	pos := int64(len(batches[0]) + 50)
	flipByte(t, first, pos)
	before = snapshotDir(t, dir)
	l, err = Open(dir, ro)
	if err != nil {
		t.Fatal(err)
	}
	err = l.Verify(nil)
	l.Close()
	var ce *CorruptionError
	if !errors.As(err, &ce) || ce.Path != first || ce.Position != int64(len(batches[0])) {
		t.Fatalf("verify: %v; want a CorruptionError in %s at position %d", err, first, len(batches[0]))
	}
	if !sameDir(before, snapshotDir(t, dir)) {
		t.Fatal("verify of a corrupt log changed the directory")
	}

	// A torn tail on the active segment: a read-only open refuses to cut it.
	segs, _ := filepath.Glob(filepath.Join(dir, "*"+".log"))
	last := segs[len(segs)-1]
	appendToFile(t, last, []byte{0, 0, 0, 0, 0, 0, 0, 1, 0, 0})
	before = snapshotDir(t, dir)
	if _, err := Open(dir, ro); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("read-only open of a torn tail: %v, want ErrReadOnly", err)
	}
	if !sameDir(before, snapshotDir(t, dir)) {
		t.Fatal("read-only open of a torn tail changed the directory")
	}
}

func TestDumpLogStructured(t *testing.T) {
	dir := t.TempDir()
	l := mustOpen(t, dir, DefaultOptions())
	batches := fill(t, l, newMaker(20), 4, 3)
	l.Close()
	path := filepath.Join(dir, FileName(0))
	flipByte(t, path, int64(len(batches[0])+len(batches[1])-1))
	appendToFile(t, path, []byte{1, 2, 3})
	d, err := DumpLog(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Batches) != 4 || d.Batches[1].CRC != "BAD" || d.Batches[0].CRC != "ok" || d.Records != 12 || d.NextOffset != 12 ||
		d.Tail == nil || !d.Tail.Torn || d.Tail.Bytes != 3 || d.Problems != 2 || *d.BaseOffset != 0 {
		t.Fatalf("dump %+v", d)
	}
	if len(d.Batches[0].Streams) == 0 || d.Batches[2].Position != int64(len(batches[0])+len(batches[1])) {
		t.Fatalf("batch details %+v", d.Batches)
	}
	var buf bytes.Buffer
	if err := DumpJSON(path, &buf); err != nil {
		t.Fatal(err)
	}
	var back LogDump
	if err := json.Unmarshal(buf.Bytes(), &back); err != nil || len(back.Batches) != 4 || back.Batches[1].CRC != "BAD" {
		t.Fatalf("JSON dump does not round-trip: %v", err)
	}
}
