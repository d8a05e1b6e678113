package segment

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/tsstore/tsstore/record"
)

// damagedLog writes a closed log of several segments and returns its
// batches, the sealed segment chosen for damage (the second) and its good
// bytes. The segment is left intact; damage flips a byte in it.
func damagedLog(t *testing.T, dir string) (bs []record.Batch, seg SegmentInfo, good []byte) {
	t.Helper()
	bs, _ = closedLog(t, dir, 150, 3)
	l := mustOpen(t, dir, testOptions())
	segs := l.Segments()
	l.Close()
	if len(segs) < 4 {
		t.Fatalf("want at least 4 segments, got %d", len(segs))
	}
	seg = segs[1]
	good, err := os.ReadFile(seg.Path)
	if err != nil {
		t.Fatal(err)
	}
	return bs, seg, good
}

// flipMiddle flips one bit in the middle of a file, in place.
func flipMiddle(t *testing.T, path string) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	flipByte(t, path, fi.Size()/2)
}

// readAll reads the whole log with ReadBatches and returns the batches.
func readAll(t *testing.T, l *Log) ([]record.Batch, error) {
	t.Helper()
	var out []record.Batch
	for from := l.FirstOffset(); from < l.NextOffset(); {
		buf, next, err := l.ReadBatches(nil, from, 64<<10)
		if err != nil {
			return out, err
		}
		out = append(out, splitBatches(t, buf)...)
		from = next
	}
	return out, nil
}

func sameBatches(t *testing.T, got, want []record.Batch) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("read %d batches, want %d", len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("batch %d differs", i)
		}
	}
}

// TestReplaceSealedWhileReading damages a sealed segment of an open log,
// shows that a read names the segment, then replaces it with the good
// bytes while readers run and one holds the old file: the holder keeps
// reading the old bytes, readers never see a closed file, and afterwards
// every read returns the original batches and Verify passes, also after a
// reopen.
func TestReplaceSealedWhileReading(t *testing.T) {
	dir := t.TempDir()
	bs, seg, good := damagedLog(t, dir)
	flipMiddle(t, seg.Path)
	l := mustOpen(t, dir, testOptions()) // the damage is in the middle: Open does not read it

	_, err := readAll(t, l)
	var ce *CorruptionError
	if !errors.As(err, &ce) {
		t.Fatalf("read of the damaged log: %v, want a CorruptionError", err)
	}
	if base, ok := CorruptSegment(err); !ok || base != seg.BaseOffset || !ce.LogDamaged() {
		t.Fatalf("CorruptSegment(%v) = %d, %v; want %d", err, base, ok, seg.BaseOffset)
	}
	if err := l.VerifySegment(seg.BaseOffset); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("VerifySegment: %v, want corruption", err)
	}
	if err := l.VerifySegment(l.Segments()[0].BaseOffset); err != nil {
		t.Fatalf("VerifySegment of a healthy segment: %v", err)
	}

	holder, err := l.OpenSealed(seg.BaseOffset)
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var reads atomic.Int64
	errs := make(chan error, 4)
	var started sync.WaitGroup // each reader has read once before the replace
	for range 3 {
		wg.Add(1)
		started.Add(1)
		go func() {
			defer wg.Done()
			for first := true; ; first = false {
				if !first {
					select {
					case <-stop:
						return
					default:
					}
				}
				_, _, err := l.ReadBatches(nil, seg.BaseOffset, 4096)
				if first {
					started.Done()
				}
				if err != nil && !errors.Is(err, ErrCorrupt) {
					errs <- err
					return
				}
				reads.Add(1)
			}
		}()
	}
	started.Wait()
	if err := l.ReplaceSealed(seg.BaseOffset, bytes.NewReader(good)); err != nil {
		t.Fatalf("ReplaceSealed: %v", err)
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("reader during the replace: %v", err)
	}
	if reads.Load() == 0 {
		t.Fatal("no read ran during the replace")
	}

	old := make([]byte, holder.Info().Size)
	if _, err := holder.ReadAt(old, 0); err != nil && err != io.EOF {
		t.Fatalf("reading the old file after the replace: %v", err)
	}
	if bytes.Equal(old, good) {
		t.Fatal("the held reader sees the new bytes; it should still read the old file")
	}
	if err := holder.Close(); err != nil {
		t.Fatalf("closing the last reference of the old file: %v", err)
	}

	got, err := readAll(t, l)
	if err != nil {
		t.Fatalf("read after the replace: %v", err)
	}
	sameBatches(t, got, bs)
	if err := l.Verify(nil); err != nil {
		t.Fatalf("Verify after the replace: %v", err)
	}
	if onDisk, _ := os.ReadFile(seg.Path); !bytes.Equal(onDisk, good) {
		t.Fatal("the .log on disk is not the good copy")
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l2 := mustOpen(t, dir, testOptions())
	if err := l2.Verify(nil); err != nil {
		t.Fatalf("Verify after reopen: %v", err)
	}
	if r := l2.Recovery(); len(r.RebuiltIndexes) != 0 || len(r.RemovedTemp) != 0 {
		t.Fatalf("reopen had to repair: %+v", r)
	}
}

// TestReplaceSealedRefusesBadCopies hands ReplaceSealed copies that are
// not the segment: each is refused, the file on disk is unchanged and no
// temporary file is left.
func TestReplaceSealedRefusesBadCopies(t *testing.T) {
	dir := t.TempDir()
	_, seg, good := damagedLog(t, dir)
	l := mustOpen(t, dir, testOptions())
	segs := l.Segments()
	other, err := os.ReadFile(segs[2].Path)
	if err != nil {
		t.Fatal(err)
	}
	firstBatch, _, err := record.Next(good)
	if err != nil {
		t.Fatal(err)
	}
	badCRC := bytes.Clone(good)
	badCRC[len(badCRC)-3] ^= 1
	for _, tc := range []struct {
		name string
		data []byte
		want error
	}{
		{"one byte more", append(bytes.Clone(good), 0), nil},
		{"one batch less", good[len(firstBatch):], nil},
		{"last byte cut", good[:len(good)-1], nil},
		{"bad crc", badCRC, ErrCorrupt},
		{"another segment", other, nil},
		{"empty", nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := l.ReplaceSealed(seg.BaseOffset, bytes.NewReader(tc.data))
			if err == nil {
				t.Fatal("accepted")
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("error %v, want %v", err, tc.want)
			}
			if onDisk, _ := os.ReadFile(seg.Path); !bytes.Equal(onDisk, good) {
				t.Fatal("the segment file changed")
			}
			if tmps, _ := filepath.Glob(filepath.Join(dir, "*"+TmpSuffix)); len(tmps) > 0 {
				t.Fatalf("temporary files left: %v", tmps)
			}
		})
	}
	active := segs[len(segs)-1].BaseOffset
	if err := l.ReplaceSealed(active, bytes.NewReader(good)); !errors.Is(err, ErrNotSealed) {
		t.Fatalf("replacing the active segment: %v, want ErrNotSealed", err)
	}
	if err := l.ReplaceSealed(seg.BaseOffset+1, bytes.NewReader(good)); !errors.Is(err, ErrNotSealed) {
		t.Fatalf("replacing at a base that names no segment: %v, want ErrNotSealed", err)
	}
	if err := l.Verify(nil); err != nil {
		t.Fatalf("Verify after the refusals: %v", err)
	}
}

// TestOpenDamagedKeepsSegment: a sealed segment whose end does not parse
// makes Open fail, unless OpenDamaged: then the log opens, lists the
// segment as damaged, reads that need it fail naming it, other reads and
// appends work, and ReplaceSealed repairs it.
func TestOpenDamagedKeepsSegment(t *testing.T) {
	dir := t.TempDir()
	bs, seg, good := damagedLog(t, dir)
	b := bytes.Clone(good)
	b[len(b)-2] ^= 0x40 // the last batch: Open verifies the batches after the last index entry
	if err := os.WriteFile(seg.Path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, testOptions()); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open: %v, want corruption", err)
	}
	o := testOptions()
	o.OpenDamaged = true
	l := mustOpen(t, dir, o)
	d := l.Damaged()
	if len(d) != 1 || d[0].BaseOffset != seg.BaseOffset || len(l.Recovery().Damaged) != 1 {
		t.Fatalf("Damaged = %+v, want segment %d", d, seg.BaseOffset)
	}
	if base, ok := CorruptSegment(d[0].Err); !ok || base != seg.BaseOffset {
		t.Fatalf("the damage names segment %d, %v", base, ok)
	}
	if l.NextOffset() != bs[len(bs)-1].Header().NextOffset() {
		t.Fatalf("NextOffset %d", l.NextOffset())
	}
	for _, from := range []uint64{seg.BaseOffset, seg.NextOffset - 1} {
		if _, _, err := l.ReadBatches(nil, from, 1<<20); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("read at %d in the damaged segment: %v", from, err)
		}
	}
	if _, _, err := l.StreamBatches(nil, "stream-1", 0, 1<<30); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("stream read across the damaged segment: %v", err)
	}
	if _, _, err := l.ReadBatches(nil, seg.NextOffset, 1<<20); err != nil {
		t.Fatalf("read after the damaged segment: %v", err)
	}
	if off := l.OffsetForTime(bs[len(bs)/3].Header().Timestamp); off > seg.NextOffset {
		t.Fatalf("OffsetForTime skipped the damaged segment: %d", off)
	}
	m := newMaker(120)
	m.next, m.ts = l.NextOffset(), bs[len(bs)-1].Header().Timestamp
	m.raft = bs[len(bs)-1].Header().RaftIndex
	more := fill(t, l, m, 3, 2)
	if err := l.Verify(nil); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Verify with a damaged segment: %v", err)
	}
	if _, err := l.OpenSealed(seg.BaseOffset); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("OpenSealed of a damaged segment: %v", err)
	}

	if err := l.ReplaceSealed(seg.BaseOffset, bytes.NewReader(good)); err != nil {
		t.Fatalf("ReplaceSealed: %v", err)
	}
	if d := l.Damaged(); len(d) != 0 {
		t.Fatalf("still damaged: %+v", d)
	}
	got, err := readAll(t, l)
	if err != nil {
		t.Fatal(err)
	}
	sameBatches(t, got, append(bs, more...))
	if err := l.Verify(nil); err != nil {
		t.Fatalf("Verify after repair: %v", err)
	}
}

// crashFS fails every change to the filesystem from the n-th one on, the
// way a crash stops a process between two steps. Reads keep working.
type crashFS struct {
	FS
	n, done atomic.Int64
}

var errCrash = errors.New("crash")

func (c *crashFS) step() error {
	if c.done.Add(1) >= c.n.Load() {
		return errCrash
	}
	return nil
}

func (c *crashFS) OpenFile(name string, flag int, perm fs.FileMode) (File, error) {
	if flag&(os.O_CREATE|os.O_TRUNC) != 0 {
		if err := c.step(); err != nil {
			return nil, err
		}
	}
	f, err := c.FS.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return &crashFile{File: f, fs: c}, nil
}

func (c *crashFS) Rename(a, b string) error {
	if err := c.step(); err != nil {
		return err
	}
	return c.FS.Rename(a, b)
}

func (c *crashFS) SyncDir(dir string) error {
	if err := c.step(); err != nil {
		return err
	}
	return c.FS.SyncDir(dir)
}

type crashFile struct {
	File
	fs *crashFS
}

func (f *crashFile) Write(p []byte) (int, error) {
	if err := f.fs.step(); err != nil {
		return 0, err
	}
	return f.File.Write(p)
}

func (f *crashFile) Sync() error {
	if err := f.fs.step(); err != nil {
		return err
	}
	return f.File.Sync()
}

// TestReplaceSealedCrash stops ReplaceSealed at each of its steps in turn
// (file creations, writes, fsyncs, renames) and reopens the directory:
// the segment's .log is always the old bytes or the new ones, never a
// mix; with the new ones the log verifies, with the old ones it is still
// damaged (and Open with OpenDamaged lists it), and Open never fails.
func TestReplaceSealedCrash(t *testing.T) {
	dir := t.TempDir()
	bs, seg, good := damagedLog(t, dir)
	flipMiddle(t, seg.Path)
	bad, _ := os.ReadFile(seg.Path)
	o := testOptions()
	o.OpenDamaged = true
	sawOld, sawNew := false, false
	for n := int64(1); ; n++ {
		cfs := &crashFS{FS: OSFS{}}
		co := o
		co.FS = cfs
		l, err := Open(dir, co)
		if err != nil {
			t.Fatalf("step %d: open: %v", n, err)
		}
		cfs.n.Store(n + cfs.done.Load())
		rerr := l.ReplaceSealed(seg.BaseOffset, bytes.NewReader(good))
		cfs.n.Store(0) // everything fails from here: the process is gone
		l.Close()

		l2, err := Open(dir, o)
		if err != nil {
			t.Fatalf("step %d: reopen after the crash: %v", n, err)
		}
		onDisk, _ := os.ReadFile(seg.Path)
		switch {
		case bytes.Equal(onDisk, good):
			sawNew = true
			got, err := readAll(t, l2)
			if err != nil {
				t.Fatalf("step %d: new bytes published, read: %v", n, err)
			}
			sameBatches(t, got, bs)
			if err := l2.Verify(nil); err != nil {
				t.Fatalf("step %d: new bytes published, Verify: %v", n, err)
			}
		case bytes.Equal(onDisk, bad):
			sawOld = true
			if rerr == nil {
				t.Fatalf("step %d: ReplaceSealed succeeded but the old bytes are on disk", n)
			}
			if err := l2.VerifySegment(seg.BaseOffset); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("step %d: old bytes, VerifySegment: %v", n, err)
			}
		default:
			t.Fatalf("step %d: the .log is neither the old nor the new bytes", n)
		}
		l2.Close()
		if rerr == nil {
			break
		}
		if !errors.Is(rerr, errCrash) {
			t.Fatalf("step %d: %v", n, rerr)
		}
		if bytes.Equal(onDisk, good) {
			// Published before the crash: start again from damage.
			if err := os.WriteFile(seg.Path, bad, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	if !sawOld || !sawNew {
		t.Fatalf("saw old %v, new %v", sawOld, sawNew)
	}
}

// TestOpenDamagedKeepsShortSegment: a sealed segment cut at a batch
// boundary verifies on its own but ends before the next segment starts.
// Open refuses the gap; with OpenDamaged it keeps the short segment as
// damaged (reads of the missing tail fail, never come back short) and
// ReplaceSealed with the whole copy repairs it.
func TestOpenDamagedKeepsShortSegment(t *testing.T) {
	dir := t.TempDir()
	bs, seg, good := damagedLog(t, dir)
	first, _, err := record.Next(good)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(seg.Path, good[:len(first)], 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, testOptions()); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open: %v, want corruption", err)
	}
	o := testOptions()
	o.OpenDamaged = true
	l := mustOpen(t, dir, o)
	if d := l.Damaged(); len(d) != 1 || d[0].BaseOffset != seg.BaseOffset {
		t.Fatalf("Damaged = %+v", d)
	}
	if _, _, err := l.ReadBatches(nil, seg.NextOffset-1, 1<<20); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("read of the missing tail: %v", err)
	}
	if err := l.ReplaceSealed(seg.BaseOffset, bytes.NewReader(good)); err != nil {
		t.Fatal(err)
	}
	got, err := readAll(t, l)
	if err != nil {
		t.Fatal(err)
	}
	sameBatches(t, got, bs)
	if err := l.Verify(nil); err != nil {
		t.Fatal(err)
	}
}
