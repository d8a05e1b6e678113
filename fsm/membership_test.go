package fsm

import (
	"bytes"
	"errors"
	"reflect"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

// The first version's layouts, as they were frozen before membership data.
type stateV1 struct {
	_msgpack      struct{} `msgpack:",as_array"`
	NextOffset    uint64
	LastTimestamp int64
	Streams       map[string]*StreamState
	Producers     map[string]*ProducerState
	Nodes         map[string]string
}

type nodesFileV1 struct {
	_msgpack struct{} `msgpack:",as_array"`
	Index    uint64
	Nodes    map[string]string
}

type registerV1 struct {
	_msgpack   struct{} `msgpack:",as_array"`
	ID         string
	APIAddress string
}

func marshal(t *testing.T, v any) []byte {
	t.Helper()
	b, err := msgpack.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestMembershipFormatsKeepFirstVersionBytes: without membership data the
// state, node file and register command encode exactly as before, and
// the old bytes decode into the new types.
func TestMembershipFormatsKeepFirstVersionBytes(t *testing.T) {
	streams := map[string]*StreamState{"run/a": {Version: 3, FirstOffset: 1, LastOffset: 9, LastTimestamp: 7}}
	producers := map[string]*ProducerState{"p": {LastSeq: 4, Windows: []Window{{FirstSeq: 1, LastSeq: 4, FirstOffset: 1, RaftIndex: 2, Timestamp: 7}}}}
	nodes := map[string]string{"n1": "127.0.0.1:1"}

	old := marshal(t, &stateV1{NextOffset: 10, LastTimestamp: 7, Streams: streams, Producers: producers, Nodes: nodes})
	st := &State{NextOffset: 10, LastTimestamp: 7, Streams: streams, Producers: producers, Nodes: nodes}
	if got := marshal(t, st); !bytes.Equal(got, old) {
		t.Fatalf("state without membership encodes as %x, first version %x", got, old)
	}
	var dec State
	if err := msgpack.Unmarshal(old, &dec); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(&dec, st) {
		t.Fatalf("old state decoded as %+v", dec)
	}

	oldNodes := marshal(t, &nodesFileV1{Index: 5, Nodes: nodes})
	if got := marshal(t, &nodesFile{Index: 5, Nodes: nodes}); !bytes.Equal(got, oldNodes) {
		t.Fatalf("node file encodes as %x, first version %x", got, oldNodes)
	}
	var nf nodesFile
	if err := msgpack.Unmarshal(oldNodes, &nf); err != nil || nf.Index != 5 || nf.Nodes["n1"] != "127.0.0.1:1" || !nf.Members.empty() {
		t.Fatalf("old node file decoded as %+v, %v", nf, err)
	}

	oldReg := marshal(t, &registerV1{ID: "n1", APIAddress: "127.0.0.1:1"})
	if got := marshal(t, &RegisterNodeCommand{ID: "n1", APIAddress: "127.0.0.1:1"}); !bytes.Equal(got, oldReg) {
		t.Fatalf("register command encodes as %x, first version %x", got, oldReg)
	}
	var reg RegisterNodeCommand
	if err := msgpack.Unmarshal(oldReg, &reg); err != nil || reg != (RegisterNodeCommand{ID: "n1", APIAddress: "127.0.0.1:1"}) {
		t.Fatalf("old register command decoded as %+v, %v", reg, err)
	}

	// With membership data the optional element round-trips.
	st.Members = Membership{Incarnations: map[string]string{"n1": "i1"}, Removed: []Tombstone{{NodeID: "n2", Incarnation: "i2", RaftIndex: 8}}}
	var back State
	if err := msgpack.Unmarshal(marshal(t, st), &back); err != nil || !reflect.DeepEqual(&back, st) {
		t.Fatalf("state with membership round-trips as %+v, %v", back, err)
	}
	// A checkpoint whose state is nil still decodes (nil-aware decoder).
	var cp checkpoint
	if err := msgpack.Unmarshal(marshal(t, &checkpoint{Version: 1, Index: 3}), &cp); err != nil || cp.State != nil || cp.Index != 3 {
		t.Fatalf("checkpoint without state decoded as %+v, %v", cp, err)
	}
	// Too few elements is an error, not a silent zero.
	if err := msgpack.Unmarshal(marshal(t, []any{uint64(1), "x"}), &dec); err == nil {
		t.Fatal("a 2-element state decoded")
	}
}

// TestMembershipTombstones: a removed incarnation leaves the node table and
// can never register again, across a reopen and a snapshot restore; a new
// incarnation of the same node id can.
func TestMembershipTombstones(t *testing.T) {
	dir := t.TempDir()
	p := openProc(t, dir)
	mustApply(t, p, 1, mustEncode(t, CmdRegisterNode, &RegisterNodeCommand{ID: "n1", APIAddress: "a1", Incarnation: "i1"}))
	mustApply(t, p, 2, mustEncode(t, CmdRegisterNode, &RegisterNodeCommand{ID: "n2", APIAddress: "a2", Incarnation: "i2"}))
	mustApply(t, p, 3, mustEncode(t, CmdRemoveNode, &RemoveNodeCommand{ID: "n2", Incarnation: "i2"}))
	if _, ok := p.Nodes()["n2"]; ok || p.Incarnation("n2") != "" {
		t.Fatalf("removed node still in the table: %v", p.Nodes())
	}
	if ts, ok := p.Removed("n2", "i2"); !ok || ts.RaftIndex != 3 {
		t.Fatalf("tombstone %+v %v", ts, ok)
	}
	r := p.Apply(4, mustEncode(t, CmdRegisterNode, &RegisterNodeCommand{ID: "n2", APIAddress: "a2", Incarnation: "i2"}))
	if !errors.Is(r.Err, ErrNodeRemoved) || p.Failed() != nil {
		t.Fatalf("re-register of a removed incarnation: %v (processor failed: %v)", r.Err, p.Failed())
	}
	if _, ok := p.Nodes()["n2"]; ok {
		t.Fatal("refused registration changed the table")
	}
	mustApply(t, p, 5, mustEncode(t, CmdRegisterNode, &RegisterNodeCommand{ID: "n2", APIAddress: "a2b", Incarnation: "i2b"}))
	if p.Nodes()["n2"] != "a2b" || p.Incarnation("n2") != "i2b" {
		t.Fatalf("new incarnation not registered: %v %q", p.Nodes(), p.Incarnation("n2"))
	}
	// Removing an incarnation that is not the registered one keeps the node.
	mustApply(t, p, 6, mustEncode(t, CmdRemoveNode, &RemoveNodeCommand{ID: "n1", Incarnation: "old"}))
	if p.Nodes()["n1"] != "a1" {
		t.Fatal("removing a stale incarnation dropped the current one")
	}
	want := p.Tombstones()
	if len(want) != 2 {
		t.Fatalf("tombstones %+v", want)
	}

	// Reopen: the node file carries the table and the tombstones, and the
	// entries at or below its index are skipped.
	p.Close()
	p2 := openProc(t, dir)
	if !reflect.DeepEqual(p2.Tombstones(), want) || p2.Incarnation("n2") != "i2b" {
		t.Fatalf("after reopen tombstones %+v incarnation %q", p2.Tombstones(), p2.Incarnation("n2"))
	}
	if r := p2.Apply(3, mustEncode(t, CmdRemoveNode, &RemoveNodeCommand{ID: "n2", Incarnation: "i2b"})); !r.Skipped {
		t.Fatalf("remove entry at or below the node file index applied: %+v", r)
	}

	// A snapshot carries them to a fresh replica.
	snap, err := p2.Snapshot()
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
	if !reflect.DeepEqual(dst.Tombstones(), want) || dst.Incarnation("n2") != "i2b" {
		t.Fatalf("restored tombstones %+v incarnation %q", dst.Tombstones(), dst.Incarnation("n2"))
	}
	if _, ok := dst.Removed("n2", "i2"); !ok {
		t.Fatal("restored replica lost the tombstone")
	}
}

// FuzzMembershipDecode: the membership-aware decoders of the state, the
// node file and the register command never panic, and what they accept
// encodes back to something that decodes to the same value.
func FuzzMembershipDecode(f *testing.F) {
	st := &State{NextOffset: 3, Nodes: map[string]string{"n1": "a"}, Members: Membership{
		Incarnations: map[string]string{"n1": "i1"}, Removed: []Tombstone{{NodeID: "n2", Incarnation: "i2", RaftIndex: 9}}}}
	for _, v := range []any{st, &State{}, &nodesFile{Index: 2, Nodes: map[string]string{"n1": "a"}, Members: st.Members},
		&RegisterNodeCommand{ID: "n1", APIAddress: "a", Incarnation: "i"}, &RegisterNodeCommand{ID: "n1"}} {
		b, err := msgpack.Marshal(v)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		roundTrip := func(v, again any) {
			if msgpack.Unmarshal(b, v) != nil {
				return
			}
			enc, err := msgpack.Marshal(v)
			if err != nil {
				t.Fatalf("re-encoding %+v: %v", v, err)
			}
			if err := msgpack.Unmarshal(enc, again); err != nil {
				t.Fatalf("decoding the re-encoding of %+v: %v", v, err)
			}
			if !reflect.DeepEqual(normalize(v), normalize(again)) {
				t.Fatalf("round trip changed %+v into %+v", v, again)
			}
		}
		roundTrip(&State{}, &State{})
		roundTrip(&nodesFile{}, &nodesFile{})
		roundTrip(&RegisterNodeCommand{}, &RegisterNodeCommand{})
	})
}

// normalize maps empty maps and slices to nil, which msgpack does not
// tell apart after a round trip.
func normalize(v any) any {
	switch x := v.(type) {
	case *State:
		c := *x
		c.Members = normMembers(c.Members)
		if len(c.Streams) == 0 {
			c.Streams = nil
		}
		if len(c.Producers) == 0 {
			c.Producers = nil
		}
		if len(c.Nodes) == 0 {
			c.Nodes = nil
		}
		return c
	case *nodesFile:
		c := *x
		c.Members = normMembers(c.Members)
		if len(c.Nodes) == 0 {
			c.Nodes = nil
		}
		return c
	}
	return v
}

func normMembers(m Membership) Membership {
	if len(m.Incarnations) == 0 {
		m.Incarnations = nil
	}
	if len(m.Removed) == 0 {
		m.Removed = nil
	}
	return m
}
