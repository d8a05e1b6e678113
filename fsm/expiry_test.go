package fsm

import (
	"errors"
	"math/rand/v2"
	"testing"
	"time"
)

func ttlEntry(t *testing.T, ts, ttl int64, ops ...AppendOp) []byte {
	t.Helper()
	b, err := Encode(CmdAppend, &AppendCommand{Timestamp: ts, Ops: ops, ProducerTTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A producer idle longer than the entry's ProducerTTL is unknown: it must
// start a new sequence at 1, a continuation is a gap (expected 1), and an
// old retry never gets another sequence's offsets.
func TestProducerExpiry(t *testing.T) {
	dir := t.TempDir()
	p := openProc(t, dir)
	day := int64(24 * time.Hour)
	ttl := 7 * day
	mustApply(t, p, 1, ttlEntry(t, day, ttl, op("old", 1, "s", 3), op("busy", 1, "s", 1)))
	// "busy" keeps appending; "old" goes quiet.
	mustApply(t, p, 2, ttlEntry(t, 5*day, ttl, op("busy", 2, "s", 1)))
	// Within the TTL "old" continues and a retry is a duplicate.
	r := mustApply(t, p, 3, ttlEntry(t, 7*day, ttl, op("old", 1, "s", 3))).Appends[0]
	if !r.Duplicate || r.FirstOffset != 0 {
		t.Fatalf("retry within the TTL: %+v", r)
	}
	// Past the TTL: the continuation is refused, a new sequence accepted.
	var gap *SequenceGapError
	err := mustApply(t, p, 4, ttlEntry(t, 9*day, ttl, op("old", 4, "s", 1))).Appends[0].Err
	if !errors.As(err, &gap) || gap.Expected != 1 {
		t.Fatalf("continuation after expiry: %v", err)
	}
	err = mustApply(t, p, 5, ttlEntry(t, 9*day, ttl, op("old", 2, "s", 1))).Appends[0].Err
	if !errors.As(err, &gap) || gap.Expected != 1 {
		t.Fatalf("an old sequence after expiry: %v", err)
	}
	next := p.NextOffset()
	r = mustApply(t, p, 6, ttlEntry(t, 9*day, ttl, op("old", 1, "s", 2))).Appends[0]
	if r.Err != nil || r.Duplicate || r.FirstOffset != next {
		t.Fatalf("new sequence after expiry: %+v", r)
	}
	// A retry of the new sequence's append gets the new offsets, never the
	// first sequence's (offset 0).
	r = mustApply(t, p, 7, ttlEntry(t, 9*day, ttl, op("old", 1, "s", 2))).Appends[0]
	if !r.Duplicate || r.FirstOffset != next {
		t.Fatalf("retry of the new sequence: %+v, want offset %d", r, next)
	}
	// "busy" (last append at day 5) is swept at day 13; "old" is not.
	mustApply(t, p, 8, ttlEntry(t, 13*day, ttl, op("other", 1, "s", 1)))
	p.mu.RLock()
	_, busy := p.mu.state.Producers["busy"]
	_, old := p.mu.state.Producers["old"]
	p.mu.RUnlock()
	if busy || !old {
		t.Fatalf("after the sweep: busy present %v (want false), old present %v (want true)", busy, old)
	}
	// A swept producer is decided exactly like an expired one.
	err = mustApply(t, p, 9, ttlEntry(t, 13*day, ttl, op("busy", 3, "s", 1))).Appends[0].Err
	if !errors.As(err, &gap) || gap.Expected != 1 {
		t.Fatalf("continuation of a swept producer: %v", err)
	}
	// A replica that rebuilds its state from the log (no checkpoint) and
	// never swept decides the same for the same entry.
	want := logBytes(t, p)
	p.Close()
	q := openProc(t, dir)
	err = q.Apply(10, ttlEntry(t, 13*day, ttl, op("busy", 3, "s", 1))).Appends[0].Err
	if !errors.As(err, &gap) || gap.Expected != 1 {
		t.Fatalf("after a restart, continuation of an expired producer: %v", err)
	}
	if got := logBytes(t, q); string(got) != string(want) {
		t.Fatal("the log changed")
	}
}

// Entries without a ProducerTTL keep the first version's 2-element
// encoding; with one, both decoders read the third element.
func TestAppendCommandTTLEncoding(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 9))
	for _, ttl := range []int64{0, int64(time.Hour), 1} {
		c := randomCommand(r)
		c.ProducerTTL, c.Compression = ttl, 0
		data, err := Encode(CmdAppend, c)
		if err != nil {
			t.Fatal(err)
		}
		if wantLen := byte(0x92 + min(ttl, 1)); data[1] != wantLen {
			t.Fatalf("ttl %d: array header %#x, want %#x", ttl, data[1], wantLen)
		}
		var fast, slow AppendCommand
		if err := decodeAppend(data, &fast); err != nil || fast.ProducerTTL != ttl {
			t.Fatalf("fast decoder: %v, ttl %d", err, fast.ProducerTTL)
		}
		if err := decode(data, &slow); err != nil || !sameCommand(&fast, &slow) || slow.ProducerTTL != ttl {
			t.Fatalf("reflection decoder: %v", err)
		}
	}
}
