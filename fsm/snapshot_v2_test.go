package fsm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/hashicorp/raft"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/tsstore/tsstore/segment"
)

// dirRemote is a tier target in a directory, for unit tests: the object
// key is a file name. It counts the bytes read.
type dirRemote struct {
	dir  string
	read *int64
}

func (d dirRemote) Open(key string, size int64) (segment.RemoteObject, error) {
	return &dirObject{d: d, key: key}, nil
}

type dirObject struct {
	d   dirRemote
	key string
}

func (o *dirObject) ReadAt(p []byte, off int64) (int, error) {
	f, err := os.Open(filepath.Join(o.d.dir, o.key))
	if errors.Is(err, os.ErrNotExist) {
		return 0, fmt.Errorf("%w: %s", segment.ErrRemoteLost, o.key)
	}
	if err != nil {
		return 0, err
	}
	defer f.Close()
	n, err := f.ReadAt(p, off)
	*o.d.read += int64(n)
	return n, err
}

func (o *dirObject) Close() error { return nil }

// openTierProc opens a processor whose log reads tiered segments from r.
func openTierProc(t testing.TB, dir string, r dirRemote) *Processor {
	t.Helper()
	cfg := DefaultConfig(dir)
	cfg.Segment.SegmentBytes = 64 << 10
	cfg.Segment.Remote = r
	p, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// tierAll uploads (copies) and commits every sealed segment but the last
// one as tiered, then evicts their local .log files. It returns their
// total size.
func tierAll(t testing.TB, p *Processor, r dirRemote, index *uint64) (tiered int64) {
	t.Helper()
	segs := p.Retention().Segments
	for _, e := range segs[:len(segs)-1] {
		key := fmt.Sprintf("seg-%d", e.BaseOffset)
		b, err := os.ReadFile(filepath.Join(p.cfg.Dir, "log", segment.FileName(e.BaseOffset)))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(r.dir, key), b, 0o644); err != nil {
			t.Fatal(err)
		}
		*index++
		mustApply(t, p, *index, mustEncodeCmd(t, CmdSegmentTiered, &SegmentTieredCommand{BaseOffset: e.BaseOffset,
			NextOffset: e.NextOffset, Size: e.Size, Checksum: e.Digest, Key: key}))
		if err := p.WithLog(func(l *segment.Log) error {
			return l.Evict(e.BaseOffset, segment.RemoteRef{Key: key, Size: e.Size, Checksum: e.Digest})
		}); err != nil {
			t.Fatal(err)
		}
		tiered += e.Size
	}
	return tiered
}

// A snapshot of a log whose sealed segments are tiered is a version 2
// stream: it carries the tiered segments' marker and index files, not
// their bytes, and restores into a log that reads the same through the
// store without having read any object. InlineTiered turns it into a
// version 1 stream with every byte, which verifies and restores too.
func TestSnapshotV2ReferencesTieredSegments(t *testing.T) {
	var read int64
	r := dirRemote{dir: t.TempDir(), read: &read}
	p := openTierProc(t, t.TempDir(), r)
	next := fillSegments(t, p, 1, 6)
	index := next
	want := logBytes(t, p)
	tiered := tierAll(t, p, r, &index)

	snap, err := p.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var stream bytes.Buffer
	if err := snap.Persist(&stream); err != nil {
		t.Fatal(err)
	}
	info, _, err := ReadSnapshotInfo(bytes.NewReader(stream.Bytes()))
	if err != nil || info.Version != snapshotV2 || len(info.Tiered) != len(p.Retention().Segments)-1 {
		t.Fatalf("info %+v, %v: want version 2 with every sealed segment but the last tiered", info, err)
	}
	total := int64(len(want))
	t.Logf("log %d bytes, %d tiered; v2 stream %d bytes", total, tiered, stream.Len())
	if int64(stream.Len()) > total-tiered+tiered/4 {
		t.Fatalf("v2 stream of %d bytes for a log of %d of which %d tiered: it carries tiered bytes", stream.Len(), total, tiered)
	}
	if n, err := io.Copy(io.Discard, VerifySnapshotStream(bytes.NewReader(stream.Bytes()))); err != nil || n != int64(stream.Len()) {
		t.Fatalf("verify v2 stream: %d bytes, %v", n, err)
	}
	// Read a byte at a time: markers split across reads verify too.
	if n, err := io.Copy(io.Discard, VerifySnapshotStream(iotest.OneByteReader(bytes.NewReader(stream.Bytes())))); err != nil || n != int64(stream.Len()) {
		t.Fatalf("verify v2 stream byte by byte: %d bytes, %v", n, err)
	}

	f := openTierProc(t, t.TempDir(), r)
	if err := f.Restore(bytes.NewReader(stream.Bytes())); err != nil {
		t.Fatal(err)
	}
	if read != 0 {
		t.Fatalf("restore of a v2 stream read %d bytes of objects", read)
	}
	if got := logBytes(t, f); !bytes.Equal(got, want) {
		t.Fatalf("restored log reads %d bytes, want %d equal", len(got), len(want))
	}
	if read < tiered {
		t.Fatalf("the restored log's read got %d bytes from the store, want at least the %d tiered", read, tiered)
	}
	// The restored log's own snapshot references the same objects.
	snap2, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var again bytes.Buffer
	if err := snap2.Persist(&again); err != nil {
		t.Fatal(err)
	}
	// (The state tables are msgpack maps, in no set order: compare the
	// references and the parts.)
	ha, err := readSnapshotHeader(bytes.NewReader(again.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	hs, _ := readSnapshotHeader(bytes.NewReader(stream.Bytes()))
	body := func(b []byte) []byte { return b[snapshotPrefixSize+int(binary.BigEndian.Uint32(b[8:12])):] }
	if !reflect.DeepEqual(ha.Segments, hs.Segments) || !bytes.Equal(body(again.Bytes()), body(stream.Bytes())) {
		t.Fatalf("the restored log's snapshot differs from the stream it came from")
	}

	// Inlined: a v1 stream with the objects' bytes.
	size, in, err := InlineTiered(bytes.NewReader(stream.Bytes()), r)
	if err != nil {
		t.Fatal(err)
	}
	full, err := io.ReadAll(VerifySnapshotStream(in))
	if err != nil || int64(len(full)) != size || size < total {
		t.Fatalf("inlined stream: %d bytes (said %d, log %d), %v", len(full), size, total, err)
	}
	if info, _, err := ReadSnapshotInfo(bytes.NewReader(full)); err != nil || info.Version != snapshotV1 || len(info.Tiered) != 0 {
		t.Fatalf("inlined info %+v, %v", info, err)
	}
	g := openProc(t, t.TempDir())
	if err := g.Restore(bytes.NewReader(full)); err != nil {
		t.Fatal(err)
	}
	if got := logBytes(t, g); !bytes.Equal(got, want) {
		t.Fatal("log restored from the inlined stream differs")
	}

	// A flipped byte in a marker: the verifier and Restore refuse it,
	// naming the object.
	bad := bytes.Clone(stream.Bytes())
	i := bytes.Index(bad, []byte(segment.TieredMagic))
	bad[i+40] ^= 1
	if _, err := io.Copy(io.Discard, VerifySnapshotStream(bytes.NewReader(bad))); err == nil || !strings.Contains(err.Error(), "seg-") {
		t.Fatalf("verify of a damaged marker: %v", err)
	}
	h := openTierProc(t, t.TempDir(), r)
	if err := h.Restore(bytes.NewReader(bad)); !errors.Is(err, ErrBadSnapshot) || !errors.Is(err, segment.ErrBadTieredFiles) {
		t.Fatalf("restore of a damaged marker: %v", err)
	}
	// A damaged .index (entry 0 not at position 0): Restore refuses it
	// without reading the object, and keeps the old log.
	hs2, _ := readSnapshotHeader(bytes.NewReader(stream.Bytes()))
	off := snapshotPrefixSize + int(binary.BigEndian.Uint32(stream.Bytes()[8:12]))
	badIdx := bytes.Clone(stream.Bytes())
	badIdx[off+int(hs2.Segments[0].Tiered.Files[0])+7] ^= 1
	read = 0
	if err := h.Restore(bytes.NewReader(badIdx)); !errors.Is(err, ErrBadSnapshot) || !errors.Is(err, segment.ErrBadTieredFiles) || read != 0 {
		t.Fatalf("restore of a damaged index: %v (%d object bytes read)", err, read)
	}
	if _, err := os.Stat(filepath.Join(h.cfg.Dir, "log.restore")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a refused restore left its directory: %v", err)
	}
}

// A version 1 header is byte-identical to the encoding before version 2
// existed, and refuses a tiered reference.
func TestSnapshotV1HeaderUnchanged(t *testing.T) {
	type oldRef struct {
		_msgpack   struct{} `msgpack:",as_array"`
		BaseOffset uint64
		NextOffset uint64
		Size       int64
	}
	type oldHeader struct {
		_msgpack struct{} `msgpack:",as_array"`
		Version  int
		Index    uint64
		State    *State
		Segments []oldRef
	}
	st := newState()
	st.NextOffset = 1 << 40
	old, err := msgpack.Marshal(&oldHeader{Version: 1, Index: 7, State: st, Segments: []oldRef{{BaseOffset: 0, NextOffset: 300, Size: 1 << 33}, {BaseOffset: 300, NextOffset: 1 << 40, Size: 5}}})
	if err != nil {
		t.Fatal(err)
	}
	now, err := msgpack.Marshal(&snapshotHeader{Version: 1, Index: 7, State: st, Segments: []segmentRef{{BaseOffset: 0, NextOffset: 300, Size: 1 << 33}, {BaseOffset: 300, NextOffset: 1 << 40, Size: 5}}})
	if err != nil || !bytes.Equal(old, now) {
		t.Fatalf("v1 header encoding changed: %x vs %x, %v", old, now, err)
	}
	var buf bytes.Buffer
	h := &snapshotHeader{Version: 1, Index: 7, State: st, Segments: []segmentRef{{BaseOffset: 0, NextOffset: 3, Size: 5, Tiered: &tieredRef{Key: "k", Files: [4]int64{1, 1, 1, 1}}}}}
	if _, err := writeHeader(&buf, h); err != nil {
		t.Fatal(err)
	}
	if _, err := readSnapshotHeader(&buf); !errors.Is(err, ErrBadSnapshot) {
		t.Fatalf("v1 header with a tiered reference: %v", err)
	}
}

// FuzzSnapshotHeader: any bytes decode to a checked header or an
// ErrBadSnapshot, never a panic; a header that decodes re-encodes to a
// stream that decodes to the same references.
func FuzzSnapshotHeader(f *testing.F) {
	st := newState()
	for _, h := range []*snapshotHeader{
		{Version: 1, Index: 3, State: st, Segments: []segmentRef{{BaseOffset: 0, NextOffset: 4, Size: 100}}},
		{Version: 2, Index: 3, State: st, Segments: []segmentRef{
			{BaseOffset: 0, NextOffset: 4, Size: 100, Tiered: &tieredRef{Key: "c/segments/0-4", Checksum: 7, Files: [4]int64{98, 8, 12, 64}}},
			{BaseOffset: 4, NextOffset: 9, Size: 50}}},
	} {
		var buf bytes.Buffer
		if _, err := writeHeader(&buf, h); err != nil {
			f.Fatal(err)
		}
		f.Add(buf.Bytes())
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := readSnapshotHeader(bytes.NewReader(b))
		if err != nil {
			if !errors.Is(err, ErrBadSnapshot) {
				t.Fatalf("error %v is not ErrBadSnapshot", err)
			}
			return
		}
		var buf bytes.Buffer
		if _, err := writeHeader(&buf, h); err != nil {
			t.Fatal(err)
		}
		again, err := readSnapshotHeader(&buf)
		if err != nil || len(again.Segments) != len(h.Segments) {
			t.Fatalf("re-encoded header: %v", err)
		}
		for i := range h.Segments {
			a, b := h.Segments[i], again.Segments[i]
			if a.BaseOffset != b.BaseOffset || a.Size != b.Size || (a.Tiered == nil) != (b.Tiered == nil) || (a.Tiered != nil && *a.Tiered != *b.Tiered) {
				t.Fatalf("segment %d: %+v, re-encoded %+v", i, a, b)
			}
		}
	})
}

// In the snapshot store a version 2 snapshot hard-links the tiered
// segments' marker and index files, lists their keys for the sweeper
// (TieredKeys, also for a stream received whole from a leader), and
// RepairFromLog rebuilds it from the log's files.
func TestSnapshotStoreV2(t *testing.T) {
	var read int64
	r := dirRemote{dir: t.TempDir(), read: &read}
	p := openTierProc(t, t.TempDir(), r)
	next := fillSegments(t, p, 1, 4)
	index := next
	tierAll(t, p, r, &index)
	store, err := NewSnapshotStore(t.TempDir(), 3, nil)
	if err != nil {
		t.Fatal(err)
	}
	snap, err := p.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	sink, err := store.Create(1, snap.Index(), 3, raft.Configuration{}, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := (&fsmSnapshot{snap}).Persist(sink); err != nil {
		t.Fatal(err)
	}
	keys, err := store.TieredKeys()
	segs := p.Retention().Segments
	if err != nil || len(keys) != len(segs)-1 || !keys[segs[0].Key] {
		t.Fatalf("TieredKeys %v, %v; want the %d tiered segments' keys", keys, err, len(segs)-1)
	}
	metas, _ := store.List()
	_, rc, err := store.Open(metas[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := io.ReadAll(VerifySnapshotStream(rc))
	rc.Close()
	if err != nil || read != 0 {
		t.Fatalf("stored v2 snapshot: %v, %d object bytes read", err, read)
	}
	// A stream received whole (state.bin only) lists its keys too.
	recv, err := NewSnapshotStore(t.TempDir(), 3, nil)
	if err != nil {
		t.Fatal(err)
	}
	rs, err := recv.Create(1, snap.Index(), 3, raft.Configuration{}, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	rs.Write(stream)
	if err := rs.Close(); err != nil {
		t.Fatal(err)
	}
	if keys, err := recv.TieredKeys(); err != nil || len(keys) != len(segs)-1 {
		t.Fatalf("received snapshot's keys %v, %v", keys, err)
	}
	// Rebuilt from the log: the same stream parts.
	var live []segment.SegmentInfo
	_ = p.WithLog(func(l *segment.Log) error { live = l.Segments(); return nil })
	id, err := store.RepairFromLog(metas[0].ID, live)
	if err != nil {
		t.Fatal(err)
	}
	_, rc, err = store.Open(id)
	if err != nil {
		t.Fatal(err)
	}
	again, err := io.ReadAll(VerifySnapshotStream(rc))
	rc.Close()
	if err != nil || !bytes.Equal(again, stream) {
		t.Fatalf("repaired v2 snapshot: %d bytes (want %d equal), %v", len(again), len(stream), err)
	}
}

// A segment evicted between a snapshot's capture and its Persist is
// referenced by key (version 2), not read back from the store.
func TestSnapshotV2EvictedAfterCapture(t *testing.T) {
	var read int64
	r := dirRemote{dir: t.TempDir(), read: &read}
	p := openTierProc(t, t.TempDir(), r)
	next := fillSegments(t, p, 1, 3)
	want := logBytes(t, p)
	snap, err := p.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	index := next
	tierAll(t, p, r, &index)
	var stream bytes.Buffer
	if err := snap.Persist(&stream); err != nil {
		t.Fatal(err)
	}
	info, _, err := ReadSnapshotInfo(bytes.NewReader(stream.Bytes()))
	if err != nil || info.Version != snapshotV2 || len(info.Tiered) != 2 || read != 0 {
		t.Fatalf("info %+v, %v, %d object bytes read: want the 2 evicted segments referenced", info, err, read)
	}
	f := openTierProc(t, t.TempDir(), r)
	if err := f.Restore(&stream); err != nil {
		t.Fatal(err)
	}
	// The capture was before the tiering commands: the restored state
	// says local, the files say tiered; reads are the same.
	if got := logBytes(t, f); !bytes.Equal(got, want[:len(got)]) || len(got) == 0 {
		t.Fatalf("restored log reads %d bytes", len(got))
	}
}
