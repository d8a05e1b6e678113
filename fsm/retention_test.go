package fsm

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"reflect"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/tsstore/tsstore/record"
	"github.com/tsstore/tsstore/segment"
)

func mustEncodeCmd(t testing.TB, ct CommandType, cmd any) []byte {
	t.Helper()
	b, err := Encode(ct, cmd)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// keptBytes returns the batches of the log from its first kept offset.
func keptBytes(t *testing.T, p *Processor) []byte {
	t.Helper()
	var out []byte
	err := p.WithLog(func(l *segment.Log) error {
		return l.Scan(l.FirstOffset(), func(b record.Batch) error { out = append(out, b...); return nil })
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// fillSegments applies entries from index next on until the log has at
// least n sealed segments, and returns the next free index. The entries
// append 4 events, without a producer, to run/a or run/b.
func fillSegments(t testing.TB, p *Processor, next uint64, n int) uint64 {
	t.Helper()
	for len(p.Retention().Segments) < n {
		o := op("", 0, fmt.Sprint("run/", []string{"a", "b"}[next%2]), 4)
		for i := range o.Events {
			o.Events[i].Payload = bytes.Repeat([]byte{byte(next)}, 500)
		}
		r := mustApply(t, p, next, appendEntry(t, int64(next)*int64(time.Second), o))
		if r.Appends[0].Err != nil {
			t.Fatalf("append at %d: %v", next, r.Appends[0].Err)
		}
		next++
	}
	return next
}

func TestRetentionPolicies(t *testing.T) {
	p := openProc(t, t.TempDir())
	set := func(index uint64, c SetRetentionCommand) *ApplyResult {
		return p.Apply(index, mustEncodeCmd(t, CmdSetRetention, &c))
	}
	if r := set(1, SetRetentionCommand{Prefix: "run/", MaxAge: int64(30 * 24 * time.Hour), MaxBytes: 2 << 40}); r.Err != nil {
		t.Fatal(r.Err)
	}
	if r := set(2, SetRetentionCommand{Prefix: "run/big/", MaxBytes: 1 << 30}); r.Err != nil {
		t.Fatal(r.Err)
	}
	if r := set(3, SetRetentionCommand{Prefix: "x", MaxAge: -1}); !errors.Is(r.Err, ErrInvalidPolicy) {
		t.Fatalf("negative age = %v", r.Err)
	}
	if r := set(4, SetRetentionCommand{Prefix: "x"}); !errors.Is(r.Err, ErrInvalidPolicy) {
		t.Fatalf("no limit = %v", r.Err)
	}
	if p.Failed() != nil {
		t.Fatalf("a refused policy stopped the processor: %v", p.Failed())
	}
	r := p.Retention()
	if r.PolicyVersion != 2 || len(r.Policies) != 2 || r.Policies[0].Prefix != "run/" || r.Policies[1].Prefix != "run/big/" {
		t.Fatalf("retention %+v", r)
	}
	if pol, ok := r.Policy("run/big/7"); !ok || pol.Prefix != "run/big/" {
		t.Fatalf("policy of run/big/7 = %+v", pol)
	}
	if pol, ok := r.Policy("run/7"); !ok || pol.Prefix != "run/" {
		t.Fatalf("policy of run/7 = %+v", pol)
	}
	if _, ok := r.Policy("other"); ok {
		t.Fatal("a policy for a stream no prefix matches")
	}
	// Update in place, then remove.
	set(5, SetRetentionCommand{Prefix: "run/", MaxAge: int64(time.Hour)})
	set(6, SetRetentionCommand{Prefix: "run/big/", Remove: true})
	r = p.Retention()
	if r.PolicyVersion != 4 || len(r.Policies) != 1 || r.Policies[0].MaxAge != int64(time.Hour) || r.Policies[0].MaxBytes != 0 {
		t.Fatalf("after update and remove: %+v", r)
	}
	// The state round-trips through its encoding; one without retention
	// keeps the 7-element form.
	st := p.mu.state.clone()
	b, err := msgpack.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	var back State
	if err := msgpack.Unmarshal(b, &back); err != nil || !reflect.DeepEqual(back.Retention, st.Retention) {
		t.Fatalf("decoded retention %+v, %v", back.Retention, err)
	}
	st.Retention = Retention{}
	st.Runs = map[string]*RunInfo{"r": {}}
	b, _ = msgpack.Marshal(st)
	if n, err := msgpack.NewDecoder(bytes.NewReader(b)).DecodeArrayLen(); err != nil || n != 7 {
		t.Fatalf("state without retention: %d elements, %v", n, err)
	}
	// Policies survive a restart: re-applied from Raft after the checkpoint.
	dir := p.cfg.Dir
	p.Close()
	p2 := openProc(t, dir)
	for i, c := range []SetRetentionCommand{
		{Prefix: "run/", MaxAge: int64(30 * 24 * time.Hour), MaxBytes: 2 << 40}, {Prefix: "run/big/", MaxBytes: 1 << 30},
		{Prefix: "x", MaxAge: -1}, {Prefix: "x"}, {Prefix: "run/", MaxAge: int64(time.Hour)}, {Prefix: "run/big/", Remove: true},
	} {
		p2.Apply(uint64(i+1), mustEncodeCmd(t, CmdSetRetention, &c))
	}
	if got := p2.Retention(); !reflect.DeepEqual(got, r) {
		t.Fatalf("after restart and replay: %+v, want %+v", got, r)
	}
}

func TestCompactDropsSealedSegments(t *testing.T) {
	p := openProc(t, t.TempDir())
	mustApply(t, p, 1, mustEncodeCmd(t, CmdSetRetention, &SetRetentionCommand{Prefix: "run/", MaxBytes: 1}))
	next := fillSegments(t, p, 2, 4)
	r := p.Retention()
	// The manifest lists every sealed segment with its digest.
	err := p.WithLog(func(l *segment.Log) error {
		segs := l.Segments()
		for i, e := range r.Segments {
			d, err := l.Digest(e.BaseOffset, true)
			if err != nil || e.Digest != d || e.BaseOffset != segs[i].BaseOffset || e.NextOffset != segs[i].NextOffset ||
				e.Size != segs[i].Size || e.State != SegmentLocal {
				return fmt.Errorf("manifest entry %d %+v, segment %+v, digest %08x %v", i, e, segs[i], d, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	cut := r.Segments[1].NextOffset
	compact := func(index uint64, c CompactCommand) *ApplyResult {
		return p.Apply(index, mustEncodeCmd(t, CmdCompact, &c))
	}
	if res := compact(next, CompactCommand{Cut: cut, PolicyVersion: 7}); !errors.Is(res.Err, ErrStalePlan) {
		t.Fatalf("stale plan = %v", res.Err)
	}
	if res := compact(next+1, CompactCommand{Cut: cut + 1, PolicyVersion: 1}); !errors.Is(res.Err, ErrBadCut) {
		t.Fatalf("cut inside a segment = %v", res.Err)
	}
	if res := compact(next+2, CompactCommand{Cut: cut, PolicyVersion: 1}); res.Err != nil {
		t.Fatal(res.Err)
	}
	if p.Failed() != nil {
		t.Fatal(p.Failed())
	}
	if p.FirstOffset() != cut || p.Retention().FirstOffset != cut {
		t.Fatalf("first offset %d, retention %d, want %d", p.FirstOffset(), p.Retention().FirstOffset, cut)
	}
	waitDropped(t, p, cut)
	for _, e := range r.Segments[:2] {
		if _, err := os.Stat(segmentPath(p, e.BaseOffset)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("segment %d still on disk: %v", e.BaseOffset, err)
		}
	}
	if got := p.Retention().Segments; got[0].State != SegmentDropped || got[1].State != SegmentDropped || got[2].State != SegmentLocal {
		t.Fatalf("manifest after the cut: %+v", got)
	}
	var oce *segment.OffsetCompactedError
	err = p.WithLog(func(l *segment.Log) error { _, _, err := l.ReadBatches(nil, 0, 1<<20); return err })
	if !errors.As(err, &oce) || oce.FirstOffset != cut {
		t.Fatalf("read below the cut = %v", err)
	}
	// A lower or equal cut changes nothing.
	if res := compact(next+3, CompactCommand{Cut: r.Segments[0].NextOffset, PolicyVersion: 1}); res.Err != nil || p.FirstOffset() != cut {
		t.Fatalf("lower cut: %v, first %d", res.Err, p.FirstOffset())
	}
	// Appends go on at the next offset; dedup and stream versions too.
	before := p.NextOffset()
	va, _ := p.StreamInfo("run/a")
	ra := mustApply(t, p, next+4, appendEntry(t, 1<<62, op("p", 1, "run/a", 2))).Appends[0]
	if ra.Err != nil || ra.FirstOffset != before || ra.StreamVersions["run/a"] != va.Version+2 {
		t.Fatalf("append after the cut %+v (next offset was %d, run/a at version %d)", ra, before, va.Version)
	}
	retry := mustApply(t, p, next+5, appendEntry(t, 1<<62, op("p", 1, "run/a", 2))).Appends[0]
	if !retry.Duplicate || retry.FirstOffset != ra.FirstOffset {
		t.Fatalf("retry after the cut %+v, want the original %+v", retry, ra)
	}
}

// waitDropped waits for the cut worker to drop the files below cut.
func waitDropped(t *testing.T, p *Processor, cut uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.waitDropped(ctx, cut); err != nil {
		t.Fatal(err)
	}
}

func segmentPath(p *Processor, base uint64) string {
	var path string
	_ = p.WithLog(func(l *segment.Log) error { path = l.Dir() + "/" + segment.FileName(base); return nil })
	return path
}

// A cut survives a restart, also when its files were still on disk (a
// snapshot held them, or the node crashed after the checkpoint): Open
// drops them.
func TestCompactRestart(t *testing.T) {
	dir := t.TempDir()
	p := openProc(t, dir)
	mustApply(t, p, 1, mustEncodeCmd(t, CmdSetRetention, &SetRetentionCommand{Prefix: "run/", MaxAge: 1}))
	next := fillSegments(t, p, 2, 4)
	r := p.Retention()
	cut := r.Segments[2].NextOffset
	held, err := p.Snapshot() // pins the files
	if err != nil {
		t.Fatal(err)
	}
	mustApply(t, p, next, mustEncodeCmd(t, CmdCompact, &CompactCommand{Cut: cut, PolicyVersion: 1}))
	p.stopCuts() // the worker has done what it can: checkpoint written, files pinned
	if _, err := os.Stat(segmentPath(p, 0)); err != nil {
		t.Fatalf("a pinned segment was dropped: %v", err)
	}
	// Reads stop at the cut already.
	var oce *segment.OffsetCompactedError
	if err := p.WithLog(func(l *segment.Log) error { _, _, err := l.ReadBatches(nil, 0, 100); return err }); !errors.As(err, &oce) || oce.FirstOffset != cut {
		t.Fatalf("read below a pinned cut = %v", err)
	}
	kept, state := keptBytes(t, p), p.mu.state.clone()
	p.Close()
	held.done.Do(func() {}) // the crash: never released

	p2 := openProc(t, dir)
	if p2.FirstOffset() != cut {
		t.Fatalf("first offset after restart %d, want %d", p2.FirstOffset(), cut)
	}
	for _, e := range r.Segments[:3] {
		if _, err := os.Stat(segmentPath(p2, e.BaseOffset)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("segment %d on disk after restart: %v", e.BaseOffset, err)
		}
	}
	if !bytes.Equal(keptBytes(t, p2), kept) || !reflect.DeepEqual(p2.mu.state, state) {
		t.Fatal("log or state differs after restart")
	}
	// Raft replays the entries after its last snapshot: skipped or
	// harmless.
	if res := p2.Apply(next, mustEncodeCmd(t, CmdCompact, &CompactCommand{Cut: cut, PolicyVersion: 1})); res.Err != nil {
		t.Fatal(res.Err)
	}
	if !reflect.DeepEqual(p2.mu.state, state) {
		t.Fatal("replayed cut changed the state")
	}
}

// A snapshot taken before a cut and persisted after it still holds its
// segments; one taken after restores the cut on a follower.
func TestCompactSnapshotRestore(t *testing.T) {
	src := openProc(t, t.TempDir())
	mustApply(t, src, 1, mustEncodeCmd(t, CmdSetRetention, &SetRetentionCommand{Prefix: "run/", MaxAge: 1}))
	next := fillSegments(t, src, 2, 4)
	cut := src.Retention().Segments[1].NextOffset
	early, err := src.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	earlyBytes := keptBytes(t, src)
	mustApply(t, src, next, mustEncodeCmd(t, CmdCompact, &CompactCommand{Cut: cut, PolicyVersion: 1}))
	var earlyStream bytes.Buffer
	if err := early.Persist(&earlyStream); err != nil {
		t.Fatalf("persist of a snapshot taken before the cut: %v", err)
	}
	// Persist released the pin: the files go now.
	waitDropped(t, src, cut)
	if _, err := os.Stat(segmentPath(src, 0)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("segment 0 after the pin was released: %v", err)
	}
	old := openProc(t, t.TempDir())
	if err := old.Restore(&earlyStream); err != nil || !bytes.Equal(keptBytes(t, old), earlyBytes) || old.FirstOffset() != 0 {
		t.Fatalf("restore of the early snapshot: %v, first %d", err, old.FirstOffset())
	}

	next = fillSegments(t, src, next+1, 5)
	snap, err := src.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var stream bytes.Buffer
	if err := snap.Persist(&stream); err != nil {
		t.Fatal(err)
	}
	dst := openProc(t, t.TempDir())
	if err := dst.Restore(&stream); err != nil {
		t.Fatal(err)
	}
	if dst.FirstOffset() != cut || !bytes.Equal(keptBytes(t, src), keptBytes(t, dst)) || !reflect.DeepEqual(src.mu.state, dst.mu.state) {
		t.Fatalf("restored: first %d (want %d), log or state differs", dst.FirstOffset(), cut)
	}
	// Both go on identically: a further cut drops the same files.
	cut2 := src.Retention().Segments[3].NextOffset
	for _, p := range []*Processor{src, dst} {
		mustApply(t, p, next, mustEncodeCmd(t, CmdCompact, &CompactCommand{Cut: cut2, PolicyVersion: 1}))
		waitDropped(t, p, cut2)
	}
	if !bytes.Equal(keptBytes(t, src), keptBytes(t, dst)) || !reflect.DeepEqual(src.Retention(), dst.Retention()) {
		t.Fatal("replicas differ after the second cut")
	}
}

// Two replicas applying the same entries, cuts included, hold the same
// bytes and the same manifest (digests included).
func TestCompactReplicasIdentical(t *testing.T) {
	a, b := openProc(t, t.TempDir()), openProc(t, t.TempDir())
	var entries [][]byte
	entries = append(entries, mustEncodeCmd(t, CmdSetRetention, &SetRetentionCommand{Prefix: "run/", MaxAge: 1}))
	for i := range 300 {
		o := op("p", uint64(i*3+1), fmt.Sprint("run/", i%5), 3)
		for j := range o.Events {
			o.Events[j].Payload = bytes.Repeat([]byte{byte(i)}, 400)
		}
		entries = append(entries, appendEntry(t, int64(i), o))
	}
	for i, e := range entries {
		mustApply(t, a, uint64(i+1), e)
		mustApply(t, b, uint64(i+1), e)
	}
	cut := a.Retention().Segments[2].NextOffset
	c := mustEncodeCmd(t, CmdCompact, &CompactCommand{Cut: cut, PolicyVersion: 1})
	mustApply(t, a, uint64(len(entries)+1), c)
	mustApply(t, b, uint64(len(entries)+1), c)
	waitDropped(t, a, cut)
	waitDropped(t, b, cut)
	ra, rb := a.Retention(), b.Retention()
	if !reflect.DeepEqual(ra, rb) || len(ra.Segments) < 4 {
		t.Fatalf("manifests differ:\n%+v\n%+v", ra, rb)
	}
	for _, p := range []*Processor{a, b} {
		err := p.WithLog(func(l *segment.Log) error {
			for _, e := range ra.Segments {
				if e.State != SegmentLocal {
					continue
				}
				if d, err := l.Digest(e.BaseOffset, true); err != nil || d != e.Digest {
					return fmt.Errorf("segment %d: digest %08x, manifest %08x, %v", e.BaseOffset, d, e.Digest, err)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(keptBytes(t, a), keptBytes(t, b)) {
		t.Fatal("logs differ")
	}
}

// A snapshot whose log retention emptied (every sealed segment dropped,
// the active one empty) restores to an empty log that resumes at the
// snapshot's next offset.
func TestRestoreWithNoSegmentLeft(t *testing.T) {
	st := newState()
	st.NextOffset, st.LastTimestamp = 500, 77
	st.Retention = Retention{FirstOffset: 500, PolicyVersion: 1, Policies: []RetentionPolicy{{Prefix: "run/", MaxAge: 1}}}
	hdr, err := msgpack.Marshal(&snapshotHeader{Version: 1, Index: 40, State: st})
	if err != nil {
		t.Fatal(err)
	}
	var stream bytes.Buffer
	var prefix [snapshotPrefixSize]byte
	copy(prefix[:8], snapshotMagic)
	binary.BigEndian.PutUint32(prefix[8:12], uint32(len(hdr)))
	binary.BigEndian.PutUint32(prefix[12:16], crc32.Checksum(hdr, castagnoli))
	stream.Write(prefix[:])
	stream.Write(hdr)
	p := openProc(t, t.TempDir())
	if err := p.Restore(&stream); err != nil {
		t.Fatal(err)
	}
	if p.NextOffset() != 500 || p.FirstOffset() != 500 || p.AppliedIndex() != 40 {
		t.Fatalf("next %d, first %d, applied %d", p.NextOffset(), p.FirstOffset(), p.AppliedIndex())
	}
	r := mustApply(t, p, 41, appendEntry(t, 100, op("", 0, "run/a", 3))).Appends[0]
	if r.Err != nil || r.FirstOffset != 500 {
		t.Fatalf("append after the restore: %+v", r)
	}
}
