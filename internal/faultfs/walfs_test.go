package faultfs

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// The Raft log's files lose what was written and not synced when the
// process dies, and the process itself reads every write.
func TestWALFSLosesUnsyncedWrites(t *testing.T) {
	dir := t.TempDir()
	w := NewWALFS(1, 0)
	f, err := w.Create(dir, "seg.wal", 4096)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("synced|"), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("pending"), 7); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 14)
	if n, err := f.ReadAt(got, 0); err != nil || n != 14 || string(got) != "synced|pending" {
		t.Fatalf("the process reads %q (%d, %v)", got, n, err)
	}
	disk, err := os.ReadFile(filepath.Join(dir, "seg.wal"))
	if err != nil {
		t.Fatal(err)
	}
	if len(disk) != 4096 || string(disk[:7]) != "synced|" || !bytes.Equal(disk[7:14], make([]byte, 7)) {
		t.Fatalf("on disk before the crash: %q... (%d bytes)", disk[:14], len(disk))
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if disk, _ := os.ReadFile(filepath.Join(dir, "seg.wal")); string(disk[:14]) != "synced|pending" {
		t.Fatalf("after Sync on disk: %q", disk[:14])
	}
}

// With partial writeback every write also puts a prefix of the oldest
// pending write on disk: a torn write after a crash.
func TestWALFSTornWrites(t *testing.T) {
	dir := t.TempDir()
	w := NewWALFS(7, 1)
	f, err := w.OpenWriter(dir, "missing.wal")
	if err == nil {
		t.Fatal("OpenWriter of a missing file succeeded")
	}
	f, err = w.Create(dir, "seg.wal", 0)
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte{0xab}, 1000)
	if _, err := f.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	disk, _ := os.ReadFile(filepath.Join(dir, "seg.wal"))
	if len(disk) >= len(data) || !bytes.Equal(disk, data[:len(disk)]) {
		t.Fatalf("on disk %d bytes, want a strict prefix of the %d written", len(disk), len(data))
	}
}
