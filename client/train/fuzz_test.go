package train

import (
	"bytes"
	"encoding/hex"
	"errors"
	"testing"
)

func addPayloadSeeds(f *testing.F) {
	for _, ev := range builtinSamples() {
		typ, p, err := Encode(ev)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(typ, p)
	}
	v1, _ := hex.DecodeString(v1Batch)
	f.Add("BatchCompleted", v1)
	f.Add("BatchCompleted", []byte{0x92, 0xcd, 0, 2, 0xdc, 0, 7, 0, 0, 0, 0, 0, 0, 0})
	f.Add(FenceType, EncodeFence(3, "x"))
}

// FuzzDecode: no bytes make Decode panic, and whatever decodes encodes
// to a payload that decodes to the same bytes again.
func FuzzDecode(f *testing.F) {
	addPayloadSeeds(f)
	f.Fuzz(func(t *testing.T, typ string, payload []byte) {
		ev, err := Decode(typ, payload)
		if err != nil {
			if ev != nil {
				t.Fatalf("Decode returned %v with error %v", ev, err)
			}
			if !errors.Is(err, ErrUnknownType) && !errors.Is(err, ErrUnknownVersion) && !errors.Is(err, ErrMalformed) {
				t.Fatalf("Decode error %v matches no sentinel", err)
			}
			return
		}
		typ2, p2, err := Encode(ev)
		if err != nil || typ2 != typ {
			t.Fatalf("a decoded %s re-encodes as %s: %v", typ, typ2, err)
		}
		ev2, err := Decode(typ2, p2)
		if err != nil {
			t.Fatalf("re-encoded %s %x does not decode: %v", typ2, p2, err)
		}
		if _, p3, _ := Encode(ev2); !bytes.Equal(p2, p3) {
			t.Fatalf("%s: %x re-encodes as %x", typ, p2, p3)
		}
	})
}

// FuzzDecodeFence: no panic; what decodes round-trips.
func FuzzDecodeFence(f *testing.F) {
	f.Add(EncodeFence(0, ""))
	f.Add(EncodeFence(1<<40, "restart"))
	f.Fuzz(func(t *testing.T, p []byte) {
		gen, reason, err := DecodeFence(p)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v is not ErrMalformed", err)
			}
			return
		}
		if g2, r2, err := DecodeFence(EncodeFence(gen, reason)); err != nil || g2 != gen || r2 != reason {
			t.Fatalf("fence %d %q does not round-trip: %v", gen, reason, err)
		}
	})
}

// FuzzUnmarshalState: no bytes make UnmarshalState panic; a state it
// accepts re-encodes stably and can be folded on without panicking.
func FuzzUnmarshalState(f *testing.F) {
	run := genRealisticRun(f, 20)
	for _, cut := range []int{0, 3, 40, 400, len(run.ins)} {
		f.Add(snapshot(f, fold(f, NewState("seed"), run.ins[:cut])))
	}
	tail := run.ins[len(run.ins)-30:]
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := UnmarshalState(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrFoldVersion) {
				t.Fatalf("error %v matches no sentinel", err)
			}
			return
		}
		b1 := snapshot(t, s)
		s2, err := UnmarshalState(b1)
		if err != nil {
			t.Fatalf("a re-encoded snapshot does not decode: %v", err)
		}
		if !bytes.Equal(snapshot(t, s2), b1) {
			t.Fatal("snapshot re-encoding is not stable")
		}
		for _, in := range tail {
			in.Offset += s.LastOffset + 1
			_ = s.Apply(in) // may refuse; must not panic
		}
	})
}

// FuzzApply: no input makes Apply panic, and a refused input leaves the
// state as it was.
func FuzzApply(f *testing.F) {
	addPayloadSeeds(f)
	base := fold(f, NewState("r"), genRealisticRun(f, 21).ins[:300])
	f.Fuzz(func(t *testing.T, typ string, payload []byte) {
		s := base.Clone()
		before := snapshot(t, s)
		in := Input{Offset: s.LastOffset + 1, Type: typ, Payload: payload}
		if err := s.Apply(in); err != nil {
			if !bytes.Equal(snapshot(t, s), before) {
				t.Fatalf("refused input (%v) changed the state", err)
			}
			return
		}
		if s.Events != base.Events+1 || s.Hash != Chain(base.Hash, in) {
			t.Fatal("an applied input was not chained and counted")
		}
	})
}
