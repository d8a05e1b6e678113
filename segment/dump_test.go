package segment

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/tsstore/tsstore/record"
)

var update = flag.Bool("update", false, "rewrite golden files under testdata/")

// TestDumpGolden dumps a log file holding good batches, one with a flipped
// bit, and a torn tail, and compares with testdata/dump.golden.
func TestDumpGolden(t *testing.T) {
	dir := t.TempDir()
	l := mustOpen(t, dir, DefaultOptions())
	var b record.Builder
	var bad int64
	for i := range 5 {
		base := l.NextOffset()
		b.Reset(base, uint64(10+i), 1_700_000_000_123_456_789+int64(i)*1_000_000_000, 0)
		for j := range i + 1 {
			r := record.Record{Stream: []byte("orders-1"), Type: []byte("Placed"), StreamVersion: base + uint64(j) + 1, Payload: []byte(`{"qty":1}`)}
			if err := b.Add(&r); err != nil {
				t.Fatal(err)
			}
		}
		batch, err := b.Finish()
		if err != nil {
			t.Fatal(err)
		}
		if i == 3 {
			bad = l.Segments()[0].Size + int64(len(batch)) - 2
		}
		if err := l.Append(batch); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, FileName(0))
	flipByte(t, path, bad)
	appendToFile(t, path, []byte{0, 0, 0, 0, 0, 0, 0, 15, 0, 0, 1, 0, 1, 2, 3})

	var got bytes.Buffer
	if err := Dump(path, &got); err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "dump.golden")
	if *update {
		if err := os.WriteFile(golden, got.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if !bytes.Equal(got.Bytes(), want) {
		t.Fatalf("Dump output differs from %s (run with -update to accept):\n%s", golden, got.String())
	}
}

func TestDumpMissingFile(t *testing.T) {
	if err := Dump(filepath.Join(t.TempDir(), FileName(0)), &bytes.Buffer{}); err == nil {
		t.Fatal("Dump of a missing file succeeded")
	}
}
