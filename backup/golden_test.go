package backup

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"
)

var update = flag.Bool("update", false, "rewrite golden files under testdata/")

// TestGoldenV1 freezes the version 1 layout: the Writer must produce
// testdata/v1.tsbackup byte for byte, and Verify must read it.
func TestGoldenV1(t *testing.T) {
	info := Info{Cluster: "prod", NodeID: "n2", RaftIndex: 4242, RaftTerm: 7, NextOffset: 100000,
		SizeBytes: 24, CreatedUnixNano: 1_795_000_000_000_000_000}
	got := build(t, info, []byte("TSSNAP01 not a real one."))
	golden := filepath.Join("testdata", "v1.tsbackup")
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("the Writer no longer writes %s: the format is frozen (bump Version for a new one)", golden)
	}
	back, off, err := verifyBytes(want)
	if err != nil || back != info || off != int64(len(want))-24-TrailerSize {
		t.Fatalf("Verify(golden): %+v at %d, %v", back, off, err)
	}
}
