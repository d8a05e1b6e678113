package faultfs

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/tsstore/tsstore/record"
	"github.com/tsstore/tsstore/segment"
)

// TestUnsyncedBytesAreLostOnCrash: the running process sees every write;
// a "crash" (a fresh FS, as after a process restart) sees only what was
// synced.
func TestUnsyncedBytesAreLostOnCrash(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	fsys := New(1, 0)
	f, err := fsys.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	mustWrite(t, f, "synced|")
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, f, "pending")
	if got := readAll(t, f); got != "synced|pending" {
		t.Fatalf("process sees %q", got)
	}
	if fi, err := fsys.Stat(path); err != nil || fi.Size() != int64(len("synced|pending")) {
		t.Fatalf("Stat size %v, %v", fi.Size(), err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	// Pending bytes survive Close (page cache) ...
	g, err := fsys.OpenFile(path, os.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, g); got != "synced|pending" {
		t.Fatalf("reopened in the same process: %q", got)
	}
	g.Close()
	// ... but not the process.
	disk, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(disk) != "synced|" {
		t.Fatalf("on disk after crash: %q, want the synced prefix", disk)
	}
}

// TestPartialWritebackLeavesAPrefix: with writeback forced on every write
// the disk holds some prefix of the logical file, never other bytes.
func TestPartialWritebackLeavesAPrefix(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	fsys := New(7, 1)
	f, err := fsys.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var want bytes.Buffer
	for i := range 50 {
		s := fmt.Sprintf("write-%02d;", i)
		want.WriteString(s)
		mustWrite(t, f, s)
	}
	disk, _ := os.ReadFile(path)
	if !bytes.HasPrefix(want.Bytes(), disk) || len(disk) == 0 {
		t.Fatalf("disk holds %q, not a non-empty prefix of %q", disk, want.String())
	}
	if got := readAll(t, f); got != want.String() {
		t.Fatalf("process sees %q", got)
	}
	if err := f.Truncate(5); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, f); got != want.String()[:5] {
		t.Fatalf("after Truncate(5): %q", got)
	}
}

// TestSegmentLogRecoversSyncedPrefix drives a real segment log through
// the FS: after a crash it reopens at the last Sync.
func TestSegmentLogRecoversSyncedPrefix(t *testing.T) {
	dir := t.TempDir()
	opts := segment.DefaultOptions()
	opts.FS = New(3, 0)
	l, err := segment.Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	appendN := func(n int) {
		for range n {
			if err := l.Append(batchAt(t, l.NextOffset())); err != nil {
				t.Fatal(err)
			}
		}
	}
	appendN(10)
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	appendN(5)
	if l.NextOffset() != 15 {
		t.Fatalf("running log ends at %d", l.NextOffset())
	}
	// Crash: the process dies without Close; a new process opens the dir.
	opts.FS = New(4, 0)
	l2, err := segment.Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	if l2.NextOffset() != 10 {
		t.Fatalf("after crash the log ends at %d, want 10 (the synced prefix)", l2.NextOffset())
	}
}

func batchAt(t *testing.T, off uint64) record.Batch {
	t.Helper()
	var b record.Builder
	b.Reset(off, off+1, 1_700_000_000_000_000_000+int64(off), 0)
	if err := b.Add(&record.Record{Stream: []byte("s"), Type: []byte("T"), Payload: []byte("payload")}); err != nil {
		t.Fatal(err)
	}
	out, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Clone(out)
}

func mustWrite(t *testing.T, f segment.File, s string) {
	t.Helper()
	if _, err := f.Write([]byte(s)); err != nil {
		t.Fatal(err)
	}
}

func readAll(t *testing.T, f segment.File) string {
	t.Helper()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, fi.Size())
	n, err := f.ReadAt(buf, 0)
	if err != nil && err != io.EOF {
		t.Fatal(err)
	}
	return string(buf[:n])
}
