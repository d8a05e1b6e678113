package fsm

import (
	"bytes"
	"errors"
	"reflect"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

func TestSegmentTiered(t *testing.T) {
	p := openProc(t, t.TempDir())
	mustApply(t, p, 1, mustEncodeCmd(t, CmdSetRetention, &SetRetentionCommand{Prefix: "run/", MaxBytes: 1}))
	next := fillSegments(t, p, 2, 3)
	segs := p.Retention().Segments
	e := segs[1]
	tier := func(c SegmentTieredCommand) *ApplyResult {
		next++
		return p.Apply(next, mustEncodeCmd(t, CmdSegmentTiered, &c))
	}
	good := SegmentTieredCommand{BaseOffset: e.BaseOffset, NextOffset: e.NextOffset, Size: e.Size, Checksum: e.Digest, Key: "c/seg-1"}
	for name, c := range map[string]SegmentTieredCommand{
		"no such segment": {BaseOffset: e.BaseOffset + 1, NextOffset: e.NextOffset, Size: e.Size, Checksum: e.Digest, Key: "k"},
		"wrong checksum":  {BaseOffset: e.BaseOffset, NextOffset: e.NextOffset, Size: e.Size, Checksum: e.Digest ^ 1, Key: "k"},
		"wrong size":      {BaseOffset: e.BaseOffset, NextOffset: e.NextOffset, Size: e.Size - 1, Checksum: e.Digest, Key: "k"},
		"wrong end":       {BaseOffset: e.BaseOffset, NextOffset: e.NextOffset + 1, Size: e.Size, Checksum: e.Digest, Key: "k"},
		"no key":          {BaseOffset: e.BaseOffset, NextOffset: e.NextOffset, Size: e.Size, Checksum: e.Digest},
	} {
		if r := tier(c); !errors.Is(r.Err, ErrBadTier) {
			t.Fatalf("%s: %v, want ErrBadTier", name, r.Err)
		}
	}
	if p.Failed() != nil || !reflect.DeepEqual(p.Retention().Segments, segs) {
		t.Fatalf("refused decisions changed something: failed %v, manifest %+v", p.Failed(), p.Retention().Segments)
	}
	if r := tier(good); r.Err != nil {
		t.Fatal(r.Err)
	}
	got := p.Retention().Segments
	if got[1].State != SegmentTiered || got[1].Key != "c/seg-1" || got[0].State != SegmentLocal || got[2].State != SegmentLocal {
		t.Fatalf("manifest after tiering segment 1: %+v", got)
	}
	if r := tier(good); r.Err != nil {
		t.Fatalf("the same decision again: %v", r.Err)
	}
	other := good
	other.Key = "c/seg-1-again"
	if r := tier(other); !errors.Is(r.Err, ErrBadTier) || p.Retention().Segments[1].Key != "c/seg-1" {
		t.Fatalf("another key for a tiered segment: %v, key %q", r.Err, p.Retention().Segments[1].Key)
	}
	// An entry at or below the watermark is skipped (replayed after a
	// restart).
	if r := p.Apply(next, mustEncodeCmd(t, CmdSegmentTiered, &other)); !r.Skipped {
		t.Fatalf("replayed entry: %+v", r)
	}
	// A snapshot carries the key to a follower.
	f := openProc(t, t.TempDir())
	snapshotInto(t, p, f)
	if fs := f.Retention().Segments; fs[1].State != SegmentTiered || fs[1].Key != "c/seg-1" {
		t.Fatalf("follower manifest after restore: %+v", fs)
	}
	// A retention cut may end at a tiered segment; the dropped entry
	// keeps its key (the object to delete).
	next++
	if r := p.Apply(next, mustEncodeCmd(t, CmdCompact, &CompactCommand{Cut: e.NextOffset, PolicyVersion: 1})); r.Err != nil {
		t.Fatal(r.Err)
	}
	got = p.Retention().Segments
	if got[1].State != SegmentDropped || got[1].Key != "c/seg-1" || p.FirstOffset() != e.NextOffset {
		t.Fatalf("manifest after a cut at the tiered segment's end: %+v", got)
	}
	if r := tier(SegmentTieredCommand{BaseOffset: e.BaseOffset, NextOffset: e.NextOffset, Size: e.Size, Checksum: e.Digest, Key: "c/late"}); !errors.Is(r.Err, ErrBadTier) {
		t.Fatalf("tiering a dropped segment: %v", r.Err)
	}
}

// snapshotInto restores a snapshot of p on f.
func snapshotInto(t *testing.T, p, f *Processor) {
	t.Helper()
	snap, err := p.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var stream bytes.Buffer
	if err := snap.Persist(&stream); err != nil {
		t.Fatal(err)
	}
	if err := f.Restore(&stream); err != nil {
		t.Fatal(err)
	}
}

// The manifest entry without a key keeps the bytes of the first
// version (a msgpack array of 6); with one it is 7 elements, and both
// decode.
func TestManifestEntryEncoding(t *testing.T) {
	type v1Entry struct {
		_msgpack      struct{} `msgpack:",as_array"`
		BaseOffset    uint64
		NextOffset    uint64
		Size          int64
		Digest        uint32
		LastTimestamp int64
		State         SegmentState
	}
	old := v1Entry{BaseOffset: 1 << 40, NextOffset: 1<<40 + 300, Size: 64 << 20, Digest: 0xdeadbeef, LastTimestamp: -5, State: SegmentDropped}
	want, err := msgpack.Marshal(&old)
	if err != nil {
		t.Fatal(err)
	}
	e := ManifestEntry{BaseOffset: old.BaseOffset, NextOffset: old.NextOffset, Size: old.Size, Digest: old.Digest, LastTimestamp: old.LastTimestamp, State: old.State}
	got, err := msgpack.Marshal(e)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("entry without a key: % x, %v; the first version wrote % x", got, err, want)
	}
	var back ManifestEntry
	if err := msgpack.Unmarshal(want, &back); err != nil || back != e {
		t.Fatalf("decoded %+v, %v", back, err)
	}
	e.State, e.Key = SegmentTiered, "cluster/segments/x.log"
	b, err := msgpack.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	back = ManifestEntry{Key: "stale"}
	if err := msgpack.Unmarshal(b, &back); err != nil || back != e {
		t.Fatalf("decoded %+v, %v; want %+v", back, err, e)
	}
	if n, _ := msgpack.NewDecoder(bytes.NewReader(b)).DecodeArrayLen(); n != 7 {
		t.Fatalf("entry with a key has %d elements", n)
	}
}
