package tiering

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestFSTarget(t *testing.T) {
	target, err := NewFSTarget(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	testTarget(t, target)
}

// A flipped byte in the share shows in Head's checksum: the directory
// target checks the bytes, not a stored claim.
func TestFSTargetHeadSeesBitrot(t *testing.T) {
	dir := t.TempDir()
	target, err := NewFSTarget(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	data := []byte("the bytes of a sealed segment")
	if _, err := target.Put(ctx, "a/b.log", bytes.NewReader(data), int64(len(data)), Checksum(data)); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "a", "b.log")
	data[3] ^= 0x40
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	info, err := target.Head(ctx, "a/b.log")
	if err != nil {
		t.Fatal(err)
	}
	data[3] ^= 0x40
	if info.Checksum == Checksum(data) {
		t.Fatal("Head returned the checksum of the bytes as written, not as stored")
	}
	// Uploads in progress are not objects.
	if _, err := target.Head(ctx, fsTmpDir+"/x"); !errors.Is(err, ErrInvalidKey) {
		t.Fatalf("Head in the upload folder: %v", err)
	}
	entries, err := os.ReadDir(filepath.Join(dir, fsTmpDir))
	if err != nil || len(entries) != 0 {
		t.Fatalf("upload folder after Put: %v %v", entries, err)
	}
}

func TestNewFSTargetNeedsADirectory(t *testing.T) {
	if _, err := NewFSTarget(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Fatal("NewFSTarget of a missing directory succeeded")
	}
}
