package segment

import (
	"errors"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/tsstore/tsstore/record"
)

func TestDropSealed(t *testing.T) {
	dir := t.TempDir()
	l := mustOpen(t, dir, testOptions())
	m := newMaker(300)
	batches := fill(t, l, m, 80, 4)
	segs := l.Segments()
	if len(segs) < 4 {
		t.Fatalf("want at least 4 segments, have %d", len(segs))
	}
	// A reader that holds the first segment keeps reading it after the drop.
	r, err := l.OpenSealed(segs[0].BaseOffset)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()

	if _, err := l.DropSealed(segs[1].BaseOffset); !errors.Is(err, ErrNotOldest) {
		t.Fatalf("drop of the second segment = %v, want ErrNotOldest", err)
	}
	active := segs[len(segs)-1].BaseOffset
	if _, err := l.DropSealed(active); !errors.Is(err, ErrNotSealed) {
		t.Fatalf("drop of the active segment = %v, want ErrNotSealed", err)
	}
	info, err := l.DropSealed(segs[0].BaseOffset)
	if err != nil || info.BaseOffset != segs[0].BaseOffset || info.NextOffset != segs[0].NextOffset {
		t.Fatalf("DropSealed = %+v, %v", info, err)
	}
	for _, name := range []string{FileName(0), indexName(0), timeIndexName(0), streamsName(0)} {
		if _, err := os.Stat(filepath.Join(dir, name)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s still there after the drop: %v", name, err)
		}
	}
	got, err := io.ReadAll(io.NewSectionReader(r, 0, segs[0].Size))
	if err != nil || int64(len(got)) != segs[0].Size {
		t.Fatalf("held reader after drop: %d bytes, %v", len(got), err)
	}
	if first := splitBatches(t, got)[0]; string(first) != string(batches[0]) {
		t.Fatal("held reader read other bytes than the dropped segment's")
	}

	checkFirst := func(l *Log) {
		t.Helper()
		if l.FirstOffset() != segs[1].BaseOffset {
			t.Fatalf("FirstOffset = %d, want %d", l.FirstOffset(), segs[1].BaseOffset)
		}
		var oce *OffsetCompactedError
		if _, _, err := l.ReadBatches(nil, 0, 1<<20); !errors.As(err, &oce) || oce.FirstOffset != segs[1].BaseOffset {
			t.Fatalf("read below the first kept offset = %v", err)
		}
		out, _, err := l.ReadBatches(nil, segs[1].BaseOffset, 1<<20)
		if err != nil || splitBatches(t, out)[0].Header().BaseOffset != segs[1].BaseOffset {
			t.Fatalf("read at the first kept offset: %v", err)
		}
		// A stream read below the cut is told so; from the cut it reads.
		if _, _, err := l.StreamBatches(nil, "stream-3", 0, 1<<20); !errors.As(err, &oce) || oce.FirstOffset != segs[1].BaseOffset {
			t.Fatalf("stream read below the first kept offset = %v", err)
		}
		sout, _, err := l.StreamBatches(nil, "stream-3", segs[1].BaseOffset, 1<<20)
		if err != nil || len(sout) == 0 || splitBatches(t, sout)[0].Header().BaseOffset < segs[1].BaseOffset {
			t.Fatalf("stream read after the drop: %d bytes, %v", len(sout), err)
		}
		if err := l.Verify(nil); err != nil {
			t.Fatalf("Verify after the drop: %v", err)
		}
	}
	checkFirst(l)
	names, err := l.SegmentStreams(segs[1].BaseOffset)
	if err != nil || len(names) != 7 || names[0] != "stream-0" || names[6] != "stream-6" {
		t.Fatalf("SegmentStreams = %v, %v", names, err)
	}
	// Appends go on; a restart sees the same log.
	fill(t, l, m, 5, 4)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = mustOpen(t, dir, testOptions())
	checkFirst(l)
}

func TestDropSealedBefore(t *testing.T) {
	dir := t.TempDir()
	l := mustOpen(t, dir, testOptions())
	fill(t, l, newMaker(300), 80, 4)
	segs := l.Segments()
	// A cut inside segment 2 drops segments 0 and 1 only: whole segments.
	cut := segs[2].BaseOffset + 1
	dropped, err := l.DropSealedBefore(cut)
	if err != nil || len(dropped) != 2 || dropped[1].BaseOffset != segs[1].BaseOffset {
		t.Fatalf("DropSealedBefore(%d) = %+v, %v", cut, dropped, err)
	}
	if l.FirstOffset() != segs[2].BaseOffset {
		t.Fatalf("FirstOffset = %d, want %d", l.FirstOffset(), segs[2].BaseOffset)
	}
	// Again: nothing more to drop.
	if dropped, err := l.DropSealedBefore(cut); err != nil || len(dropped) != 0 {
		t.Fatalf("repeated DropSealedBefore = %+v, %v", dropped, err)
	}
	// A cut past the end keeps the active segment.
	if _, err := l.DropSealedBefore(l.NextOffset() + 100); err != nil {
		t.Fatal(err)
	}
	left := l.Segments()
	if len(left) != 1 || left[0].BaseOffset != segs[len(segs)-1].BaseOffset {
		t.Fatalf("after a cut past the end: %+v", left)
	}
	if _, _, err := l.ReadBatches(nil, left[0].BaseOffset, 1<<20); err != nil {
		t.Fatal(err)
	}
}

// A crash in the middle of a drop leaves the segment's .log without some
// index files: Open rebuilds them and the drop can be repeated.
func TestDropSealedInterrupted(t *testing.T) {
	dir := t.TempDir()
	l := mustOpen(t, dir, testOptions())
	fill(t, l, newMaker(300), 60, 4)
	segs := l.Segments()
	l.Close()
	for _, name := range []string{streamsName(0), timeIndexName(0)} {
		if err := os.Remove(filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	l = mustOpen(t, dir, testOptions())
	if l.FirstOffset() != 0 || len(l.Recovery().RebuiltIndexes) != 1 {
		t.Fatalf("reopen: first %d, rebuilt %v", l.FirstOffset(), l.Recovery().RebuiltIndexes)
	}
	if _, err := l.DropSealedBefore(segs[0].NextOffset); err != nil {
		t.Fatal(err)
	}
	if l.FirstOffset() != segs[1].BaseOffset {
		t.Fatalf("FirstOffset = %d", l.FirstOffset())
	}
}

// Readers racing with drops get whole batches or an OffsetCompactedError,
// never a closed file or a short answer; appends (and the rolls they
// cause) go on meanwhile, from another goroutine than the drops'.
func TestDropSealedConcurrentReaders(t *testing.T) {
	l := mustOpen(t, t.TempDir(), testOptions())
	m := newMaker(300)
	fill(t, l, m, 120, 4)
	segs := l.Segments()
	var wg sync.WaitGroup
	stop := make(chan struct{})
	errs := make(chan error, 5)
	more := make([]record.Batch, 120)
	for i := range more {
		more[i] = m.batch(t, 4)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for _, b := range more {
			if err := l.Append(b); err != nil {
				errs <- err
				return
			}
		}
	}()
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var buf []byte
			for {
				select {
				case <-stop:
					return
				default:
				}
				from := uint64(0)
				for from < segs[len(segs)-1].BaseOffset {
					var err error
					buf, from, err = l.ReadBatches(buf[:0], from, 8<<10)
					var oce *OffsetCompactedError
					if errors.As(err, &oce) {
						from = oce.FirstOffset
						continue
					}
					if err != nil {
						errs <- err
						return
					}
					if _, err := record.Verify(buf); err != nil {
						errs <- err
						return
					}
				}
			}
		}()
	}
	for _, s := range segs[:len(segs)-1] {
		if _, err := l.DropSealed(s.BaseOffset); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("reader: %v", err)
	}
}

func TestDigest(t *testing.T) {
	dir := t.TempDir()
	l := mustOpen(t, dir, testOptions())
	fill(t, l, newMaker(300), 60, 4)
	segs := l.Segments()
	want := func(s SegmentInfo) uint32 {
		t.Helper()
		b, err := os.ReadFile(s.Path)
		if err != nil {
			t.Fatal(err)
		}
		return crc32.Checksum(b[:s.Size], castagnoli)
	}
	for _, s := range segs[:len(segs)-1] {
		if !s.DigestKnown || s.Digest != want(s) {
			t.Fatalf("segment %d: digest %08x known %v, file's %08x", s.BaseOffset, s.Digest, s.DigestKnown, want(s))
		}
	}
	l.Close()
	// After a restart sealed segments are not read whole: Digest reads them.
	l = mustOpen(t, dir, testOptions())
	s1 := l.Segments()[1]
	if s1.DigestKnown {
		t.Fatal("sealed segment's digest known without a full read")
	}
	if d, err := l.Digest(s1.BaseOffset, false); err != nil || d != want(s1) {
		t.Fatalf("Digest = %08x, %v; want %08x", d, err, want(s1))
	}
	if a := l.Segments()[len(segs)-1]; !a.DigestKnown || a.Digest != want(a) {
		t.Fatalf("active segment's digest after Open: %08x known %v, want %08x", a.Digest, a.DigestKnown, want(a))
	}
	// Bit rot after the digest was taken: a fresh digest and Verify see it.
	f, err := os.OpenFile(s1.Path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{'#'}, s1.Size-3); err != nil {
		t.Fatal(err)
	}
	f.Close()
	// want(s1) now reads the rotted file: a fresh digest matches it, the
	// one taken before does not.
	if d, err := l.Digest(s1.BaseOffset, true); err != nil || d != want(s1) {
		t.Fatalf("fresh Digest = %08x, %v; want %08x", d, err, want(s1))
	}
	if known, _ := l.Digest(s1.BaseOffset, false); known == want(s1) {
		t.Fatal("the digest taken before the rot equals the rotted file's")
	}
	if err := l.VerifySegment(s1.BaseOffset); err == nil {
		t.Fatal("VerifySegment passed a rotted segment")
	}
}

// The read floor hides offsets below it before (or without) their
// segments being dropped; it never goes down and never passes the end.
func TestSetFirstOffset(t *testing.T) {
	l := mustOpen(t, t.TempDir(), testOptions())
	batches := fill(t, l, newMaker(300), 60, 4)
	floor := batches[5].Header().BaseOffset
	l.SetFirstOffset(floor)
	l.SetFirstOffset(floor - 4)
	if l.FirstOffset() != floor {
		t.Fatalf("FirstOffset = %d, want %d", l.FirstOffset(), floor)
	}
	var oce *OffsetCompactedError
	if _, _, err := l.ReadBatches(nil, floor-1, 1<<20); !errors.As(err, &oce) || oce.FirstOffset != floor {
		t.Fatalf("read below the floor = %v", err)
	}
	if _, _, err := l.StreamBatches(nil, "stream-1", 0, 1<<20); !errors.As(err, &oce) || oce.FirstOffset != floor {
		t.Fatalf("stream read below the floor = %v", err)
	}
	out, _, err := l.ReadBatches(nil, floor, 1<<20)
	if err != nil || string(splitBatches(t, out)[0]) != string(batches[5]) {
		t.Fatalf("read at the floor: %v", err)
	}
	l.SetFirstOffset(l.NextOffset() + 1000)
	if l.FirstOffset() != l.NextOffset() {
		t.Fatalf("floor past the end: FirstOffset %d, NextOffset %d", l.FirstOffset(), l.NextOffset())
	}
}
