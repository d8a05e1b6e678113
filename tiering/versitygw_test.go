package tiering

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/tsstore/tsstore/internal/s3test"
)

// vgwTarget returns an S3Target on a new bucket of the real server g.
func vgwTarget(t *testing.T, g *s3test.Server, bucket, prefix string) *S3Target {
	t.Helper()
	g.CreateBucket(bucket)
	cfg := DefaultS3Config()
	cfg.Endpoint, cfg.Bucket, cfg.Prefix, cfg.PathStyle = g.Endpoint(), bucket, prefix, true
	cfg.AccessKeyID, cfg.SecretAccessKey = g.AccessKey, g.SecretKey
	cfg.RequestTimeout = 30 * time.Second
	target, err := NewS3Target(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return target
}

func TestS3TargetVersityGW(t *testing.T) {
	g := s3test.Start(t)
	testTarget(t, vgwTarget(t, g, "tier", "cluster-a/"))
}

// Objects survive a restart of the store; while it is down, every call
// fails with an error that is not ErrNotFound (a caller must never take
// an unreachable store for a missing object) and Put leaves nothing.
func TestS3TargetVersityGWRestart(t *testing.T) {
	g := s3test.Start(t)
	target := vgwTarget(t, g, "tier", "")
	ctx := context.Background()
	data := bytes.Repeat([]byte("sealed segment bytes "), 50000)
	sum := Checksum(data)
	if _, err := target.Put(ctx, "seg/1.log", bytes.NewReader(data), int64(len(data)), sum); err != nil {
		t.Fatal(err)
	}

	g.Stop()
	short, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := target.Head(short, "seg/1.log"); err == nil || errors.Is(err, ErrNotFound) {
		t.Fatalf("Head while the store is down: %v, want an error other than ErrNotFound", err)
	}
	if _, err := target.Put(short, "seg/2.log", bytes.NewReader(data), int64(len(data)), sum); err == nil || errors.Is(err, ErrExists) {
		t.Fatalf("Put while the store is down: %v", err)
	}

	g.Restart()
	info, err := target.Head(ctx, "seg/1.log")
	if err != nil || info.Size != int64(len(data)) || info.Checksum != sum {
		t.Fatalf("Head after restart = %+v, %v", info, err)
	}
	rc, err := target.GetRange(ctx, "seg/1.log", 1000, 1<<16)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(got, data[1000:1000+1<<16]) {
		t.Fatalf("GetRange after restart: %d bytes, %v", len(got), err)
	}
	if _, err := target.Head(ctx, "seg/2.log"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("the Put that failed while the store was down left %s: %v", "seg/2.log", err)
	}
	// The object is a plain file of the posix backend: what the store
	// holds is the bytes we sent.
	onDisk, err := os.ReadFile(filepath.Join(g.Root, "data", "tier", "seg", "1.log"))
	if err != nil || Checksum(onDisk) != sum {
		t.Fatalf("posix backend file: %d bytes, %v; checksum %s", len(onDisk), err, strconv.FormatUint(uint64(Checksum(onDisk)), 16))
	}
}

// changingReader serves good bytes to the first full read (Put's own
// check) and a flipped byte afterwards (the upload): a body damaged
// between the check and the wire.
type changingReader struct {
	good, bad []byte
	served    int64
}

func (r *changingReader) ReadAt(p []byte, off int64) (int, error) {
	src := r.good
	if r.served >= int64(len(r.good)) {
		src = r.bad
	}
	if off >= int64(len(src)) {
		return 0, io.EOF
	}
	n := copy(p, src[off:])
	r.served += int64(n)
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// The real store checks x-amz-checksum-crc32c: a body that no longer
// matches the checksum is refused with ErrChecksum and nothing is stored.
func TestS3TargetVersityGWRefusesDamagedBody(t *testing.T) {
	g := s3test.Start(t)
	target := vgwTarget(t, g, "tier", "")
	ctx := context.Background()
	good := bytes.Repeat([]byte("0123456789"), 10000)
	bad := bytes.Clone(good)
	bad[777] ^= 1
	_, err := target.Put(ctx, "seg/damaged.log", &changingReader{good: good, bad: bad}, int64(len(good)), Checksum(good))
	if !errors.Is(err, ErrChecksum) {
		t.Fatalf("Put of a body damaged after the check: %v, want ErrChecksum", err)
	}
	if _, err := target.Head(ctx, "seg/damaged.log"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Head after the refused Put: %v, want ErrNotFound", err)
	}
}

// Two writers that both pass Put's head check: the store's If-None-Match
// refuses the second, and the first object stays.
func TestS3TargetVersityGWIfNoneMatch(t *testing.T) {
	g := s3test.Start(t)
	target := vgwTarget(t, g, "tier", "")
	ctx := context.Background()
	first, second := []byte("first writer"), []byte("second writer")
	if err := target.putObject(ctx, "seg/race.log", bytes.NewReader(first), int64(len(first)), Checksum(first)); err != nil {
		t.Fatal(err)
	}
	err := target.putObject(ctx, "seg/race.log", bytes.NewReader(second), int64(len(second)), Checksum(second))
	if !errors.Is(err, ErrExists) {
		t.Fatalf("second conditional PUT: %v, want ErrExists", err)
	}
	if info, err := target.Head(ctx, "seg/race.log"); err != nil || info.Checksum != Checksum(first) {
		t.Fatalf("Head = %+v, %v; the first object must stay", info, err)
	}
}
