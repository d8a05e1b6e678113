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

// A share that is not mounted (the target's directory empty, or gone) is
// an unavailable store, not a store whose objects are all lost: Head and
// GetRange fail without ErrNotFound, List fails rather than list nothing,
// and Put writes nothing there. Mounted again, everything is back; a key
// that is really missing is still ErrNotFound.
func TestFSTargetNotMounted(t *testing.T) {
	ctx := context.Background()
	root := filepath.Join(t.TempDir(), "share")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	tg, err := NewFSTarget(root)
	if err != nil {
		t.Fatal(err)
	}
	body := []byte("segment bytes")
	if _, err := tg.Put(ctx, "c/segments/a.log", bytes.NewReader(body), int64(len(body)), Checksum(body)); err != nil {
		t.Fatal(err)
	}
	mounted := root + ".mounted"
	if err := os.Rename(root, mounted); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(root, 0o755); err != nil { // the empty mount point
		t.Fatal(err)
	}
	if _, err := tg.Head(ctx, "c/segments/a.log"); err == nil || errors.Is(err, ErrNotFound) {
		t.Fatalf("Head with the share not mounted: %v, want an error that is not ErrNotFound", err)
	}
	if _, err := tg.GetRange(ctx, "c/segments/a.log", 0, 4); err == nil || errors.Is(err, ErrNotFound) {
		t.Fatalf("GetRange with the share not mounted: %v, want an error that is not ErrNotFound", err)
	}
	if err := tg.List(ctx, "c/", func(ObjectInfo) error { return nil }); err == nil {
		t.Fatal("List with the share not mounted listed nothing and no error")
	}
	if _, err := tg.Put(ctx, "c/segments/b.log", bytes.NewReader(body), int64(len(body)), Checksum(body)); err == nil {
		t.Fatal("Put wrote into the empty mount point")
	}
	if entries, _ := os.ReadDir(root); len(entries) != 0 {
		t.Fatalf("the mount point holds %d entries after the failed calls", len(entries))
	}
	// Mounted again.
	if err := os.Remove(root); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(mounted, root); err != nil {
		t.Fatal(err)
	}
	if info, err := tg.Head(ctx, "c/segments/a.log"); err != nil || info.Size != int64(len(body)) {
		t.Fatalf("Head once mounted again: %+v, %v", info, err)
	}
	if _, err := tg.Head(ctx, "c/segments/missing.log"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Head of a missing key: %v, want ErrNotFound", err)
	}
}
