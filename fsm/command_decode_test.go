package fsm

import (
	"bytes"
	"github.com/tsstore/tsstore/record"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

// sameCommand compares two decoded commands, treating nil and empty byte
// slices alike (both mean "none" to the FSM).
func sameCommand(a, b *AppendCommand) bool {
	if a.Timestamp != b.Timestamp || a.ProducerTTL != b.ProducerTTL || a.Compression != b.Compression || len(a.Ops) != len(b.Ops) {
		return false
	}
	for i := range a.Ops {
		x, y := &a.Ops[i], &b.Ops[i]
		if x.ProducerID != y.ProducerID || x.Seq != y.Seq || len(x.Events) != len(y.Events) || len(x.Expect) != len(y.Expect) ||
			x.EventSum != y.EventSum || x.HasEventSum != y.HasEventSum || x.Generation != y.Generation {
			return false
		}
		for j := range x.Events {
			e, f := &x.Events[j], &y.Events[j]
			if e.Stream != f.Stream || e.Type != f.Type || !bytes.Equal(e.Metadata, f.Metadata) || !bytes.Equal(e.Payload, f.Payload) {
				return false
			}
		}
		for j := range x.Expect {
			if x.Expect[j].Stream != y.Expect[j].Stream || x.Expect[j].Kind != y.Expect[j].Kind || x.Expect[j].Version != y.Expect[j].Version {
				return false
			}
		}
	}
	return true
}

func randomCommand(r *rand.Rand) *AppendCommand {
	sizes := []int{0, 1, 31, 32, 255, 256, 65535, 65536}
	blob := func() []byte {
		switch r.IntN(4) {
		case 0:
			return nil
		case 1:
			return []byte{}
		}
		return bytes.Repeat([]byte{byte(r.IntN(256))}, sizes[r.IntN(len(sizes))])
	}
	name := func() string { return strings.Repeat("s", sizes[r.IntN(5)]) + string(rune('a'+r.IntN(3))) }
	ts := []int64{0, 1, -1, -33, 127, 128, math.MaxInt64, math.MinInt64, 1 << 40}[r.IntN(9)]
	cmd := &AppendCommand{Timestamp: ts}
	switch r.IntN(4) { // the 2-, 3- and 4-element forms
	case 1:
		cmd.ProducerTTL = []int64{1, 127, 1 << 50}[r.IntN(3)]
	case 2:
		cmd.Compression = record.CompressionZstd
		cmd.ProducerTTL = []int64{0, 7}[r.IntN(2)]
	}
	if r.IntN(8) == 0 {
		return cmd // nil Ops
	}
	for range r.IntN(6) {
		op := AppendOp{ProducerID: name(), Seq: []uint64{0, 1, 300, 70000, 1 << 33, math.MaxUint64}[r.IntN(6)]}
		if r.IntN(10) == 0 { // array32 of events, small ones
			for range 70000 {
				op.Events = append(op.Events, Event{Stream: "s", Type: "T", Payload: []byte{1}})
			}
		}
		for range []int{0, 1, 3, 17}[r.IntN(4)] {
			op.Events = append(op.Events, Event{Stream: name(), Type: name(), Metadata: blob(), Payload: blob()})
		}
		for range r.IntN(3) {
			op.Expect = append(op.Expect, Expectation{Stream: name(), Kind: ExpectKind(r.IntN(4)), Version: uint64(r.IntN(1 << 20))})
		}
		if r.IntN(2) == 0 {
			op.EventSum, op.HasEventSum = SumEvents(op.Events), true
		}
		if r.IntN(3) == 0 { // the 6-element form, with or without a sum
			op.Generation = []uint64{1, 127, 128, 1 << 40, math.MaxUint64}[r.IntN(5)]
		}
		cmd.Ops = append(cmd.Ops, op)
	}
	return cmd
}

// TestDecodeAppendMatchesReflection checks the fast decoder against
// msgpack.Unmarshal on commands of every size class of every field.
func TestDecodeAppendMatchesReflection(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 200 {
		data, err := Encode(CmdAppend, randomCommand(r))
		if err != nil {
			t.Fatal(err)
		}
		var fast, slow AppendCommand
		if err := decodeAppend(data, &fast); err != nil {
			t.Fatalf("command %d: %v", i, err)
		}
		if err := decode(data, &slow); err != nil {
			t.Fatal(err)
		}
		if !sameCommand(&fast, &slow) {
			t.Fatalf("command %d decodes differently", i)
		}
		d := rawDecoder{b: data[1:]}
		var c AppendCommand
		if !d.appendCommand(&c) || d.bad || len(d.b) != 0 {
			t.Fatalf("command %d fell back to reflection", i)
		}
	}
}

// TestDecodeAppendFallsBack gives the fast path encodings it does not
// handle: an extra field and a truncated entry.
func TestDecodeAppendFallsBack(t *testing.T) {
	type appendV2 struct {
		_msgpack  struct{} `msgpack:",as_array"`
		Timestamp int64
		Ops       []AppendOp
		Extra     string
	}
	m, err := msgpack.Marshal(&appendV2{Timestamp: 5, Ops: []AppendOp{{ProducerID: "p", Seq: 1, Events: []Event{{Stream: "s", Type: "T"}}}}, Extra: "x"})
	if err != nil {
		t.Fatal(err)
	}
	var cmd AppendCommand
	err = decodeAppend(append([]byte{byte(CmdAppend)}, m...), &cmd)
	var slow AppendCommand
	serr := decode(append([]byte{byte(CmdAppend)}, m...), &slow)
	if (err == nil) != (serr == nil) || (err == nil && !sameCommand(&cmd, &slow)) {
		t.Fatalf("extra field: fast %v %+v, reflection %v %+v", err, cmd, serr, slow)
	}
	data, _ := Encode(CmdAppend, randomCommand(rand.New(rand.NewPCG(3, 4))))
	if err := decodeAppend(data[:len(data)/2], &cmd); err == nil {
		t.Fatal("truncated entry decoded")
	}
}

// FuzzDecodeAppend: on any input the fast decoder agrees with the
// reflection decoder (error or same command) and never panics.
func FuzzDecodeAppend(f *testing.F) {
	r := rand.New(rand.NewPCG(5, 6))
	for range 8 {
		data, _ := Encode(CmdAppend, randomCommand(r))
		if len(data) < 4096 {
			f.Add(data)
		}
	}
	f.Add([]byte{byte(CmdAppend), 0x92, 0x01, 0xc0})
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		var fast, slow AppendCommand
		ferr := decodeAppend(data, &fast)
		serr := decode(data, &slow)
		if (ferr == nil) != (serr == nil) {
			t.Fatalf("fast %v, reflection %v", ferr, serr)
		}
		if ferr == nil && !sameCommand(&fast, &slow) {
			t.Fatal("decoded differently")
		}
	})
}
