package tiering

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"testing"
)

// testTarget is the contract every Target meets, run against each one.
func testTarget(t *testing.T, target Target) {
	t.Helper()
	ctx := context.Background()
	data := make([]byte, 3<<20+17) // more than one S3 part, not a round size
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	sum := Checksum(data)
	key := "seg/00000000000000000100-3-a.log"

	t.Run("PutHead", func(t *testing.T) {
		info, err := target.Put(ctx, key, bytes.NewReader(data), int64(len(data)), sum)
		if err != nil {
			t.Fatalf("Put: %v", err)
		}
		if info.Size != int64(len(data)) || info.Checksum != sum {
			t.Fatalf("Put returned %+v", info)
		}
		got, err := target.Head(ctx, key)
		if err != nil {
			t.Fatalf("Head: %v", err)
		}
		if got.Key != key || got.Size != int64(len(data)) || got.Checksum != sum {
			t.Fatalf("Head = %+v, want size %d checksum %08x", got, len(data), sum)
		}
	})
	t.Run("PutExisting", func(t *testing.T) {
		other := []byte("other bytes")
		_, err := target.Put(ctx, key, bytes.NewReader(other), int64(len(other)), Checksum(other))
		if !errors.Is(err, ErrExists) {
			t.Fatalf("second Put of %s: %v, want ErrExists", key, err)
		}
		if got, err := target.Head(ctx, key); err != nil || got.Checksum != sum {
			t.Fatalf("after the refused Put: Head = %+v, %v; the first object must stay", got, err)
		}
	})
	t.Run("PutWrongChecksum", func(t *testing.T) {
		k := "seg/wrong.log"
		_, err := target.Put(ctx, k, bytes.NewReader(data), int64(len(data)), sum^1)
		if !errors.Is(err, ErrChecksum) {
			t.Fatalf("Put with a wrong checksum: %v, want ErrChecksum", err)
		}
		if _, err := target.Head(ctx, k); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Head after a refused Put: %v, want ErrNotFound", err)
		}
	})
	t.Run("PutShortBody", func(t *testing.T) {
		k := "seg/short.log"
		if _, err := target.Put(ctx, k, bytes.NewReader(data[:10]), 20, sum); err == nil {
			t.Fatal("Put of a body shorter than its size succeeded")
		}
		if _, err := target.Head(ctx, k); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Head after a failed Put: %v, want ErrNotFound", err)
		}
	})
	t.Run("GetRange", func(t *testing.T) {
		for _, r := range []struct{ off, n int64 }{
			{0, 1}, {0, int64(len(data))}, {12345, 4 << 10}, {int64(len(data)) - 5, 5},
			{int64(len(data)) - 5, 100}, // past the end: the tail only
			{int64(len(data)) + 10, 5},  // all past the end: nothing
			{1 << 20, 0},
		} {
			rc, err := target.GetRange(ctx, key, r.off, r.n)
			if err != nil {
				t.Fatalf("GetRange(%d, %d): %v", r.off, r.n, err)
			}
			got, err := io.ReadAll(rc)
			rc.Close()
			if err != nil {
				t.Fatalf("GetRange(%d, %d) read: %v", r.off, r.n, err)
			}
			end := int64(len(data))
			want := data[min(r.off, end):min(r.off+r.n, end)]
			if !bytes.Equal(got, want) {
				t.Fatalf("GetRange(%d, %d): %d bytes, want %d (equal prefix %v)", r.off, r.n, len(got), len(want), bytes.HasPrefix(want, got))
			}
		}
	})
	t.Run("Missing", func(t *testing.T) {
		if _, err := target.Head(ctx, "seg/none.log"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Head of a missing key: %v", err)
		}
		rc, err := target.GetRange(ctx, "seg/none.log", 0, 10)
		if err == nil {
			rc.Close()
		}
		if !errors.Is(err, ErrNotFound) {
			t.Fatalf("GetRange of a missing key: %v", err)
		}
		if err := target.Delete(ctx, "seg/none.log"); err != nil {
			t.Fatalf("Delete of a missing key: %v", err)
		}
	})
	t.Run("InvalidKey", func(t *testing.T) {
		for _, k := range []string{"", "/abs", "a//b", "a/../b", "./a", "a\\b"} {
			if _, err := target.Head(ctx, k); !errors.Is(err, ErrInvalidKey) {
				t.Errorf("Head(%q): %v, want ErrInvalidKey", k, err)
			}
		}
	})
	t.Run("ListDelete", func(t *testing.T) {
		small := []byte("x")
		for _, k := range []string{"seg/a-2.log", "seg/a/1.log", "seg-other/z.log", "segz.log"} {
			if _, err := target.Put(ctx, k, bytes.NewReader(small), 1, Checksum(small)); err != nil {
				t.Fatalf("Put %s: %v", k, err)
			}
		}
		list := func(prefix string) []string {
			var keys []string
			if err := target.List(ctx, prefix, func(o ObjectInfo) error {
				keys = append(keys, o.Key)
				return nil
			}); err != nil {
				t.Fatalf("List(%q): %v", prefix, err)
			}
			return keys
		}
		want := []string{key, "seg/a-2.log", "seg/a/1.log"}
		if got := list("seg/"); !equal(got, sorted(want)) {
			t.Fatalf("List(seg/) = %q, want %q", got, sorted(want))
		}
		if got := list(""); len(got) != 5 {
			t.Fatalf("List() = %q, want 5 keys", got)
		}
		stop := errors.New("stop")
		if err := target.List(ctx, "", func(ObjectInfo) error { return stop }); !errors.Is(err, stop) {
			t.Fatalf("List with fn failing: %v", err)
		}
		if err := target.Delete(ctx, key); err != nil {
			t.Fatalf("Delete: %v", err)
		}
		if _, err := target.Head(ctx, key); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Head after Delete: %v", err)
		}
		if got := list("seg/"); !equal(got, []string{"seg/a-2.log", "seg/a/1.log"}) {
			t.Fatalf("List(seg/) after Delete = %q", got)
		}
	})
}

func sorted(s []string) []string {
	out := append([]string(nil), s...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
