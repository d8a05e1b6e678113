package fsm

import (
	"bytes"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

// TestEncodeIsTypeThenMsgpack pins the Raft entry format: the command
// type byte, then msgpack.Marshal of the command, byte for byte, whatever
// buffer Encode writes it into.
func TestEncodeIsTypeThenMsgpack(t *testing.T) {
	withExpect := benchCommand(entryShape{"x", 3, 2}, 7)
	withExpect.Ops[1].Expect = []Expectation{{Stream: "run/bench-1", Kind: 4, Version: 9}}
	withExpect.Ops[2].Events[0].Metadata = []byte("meta")
	for _, c := range []struct {
		t   CommandType
		cmd any
	}{
		{CmdAppend, &AppendCommand{}},
		{CmdAppend, benchCommand(entryShape{"x", 1, 4096}, 1)},
		{CmdAppend, withExpect},
		{CmdRegisterNode, &RegisterNodeCommand{ID: "n1", APIAddress: "127.0.0.1:7201"}},
	} {
		got, err := Encode(c.t, c.cmd)
		if err != nil {
			t.Fatal(err)
		}
		m, err := msgpack.Marshal(c.cmd)
		if err != nil {
			t.Fatal(err)
		}
		if want := append([]byte{byte(c.t)}, m...); !bytes.Equal(got, want) {
			t.Fatalf("%T: Encode differs from type + msgpack.Marshal (%d vs %d bytes)", c.cmd, len(got), len(want))
		}
		if cmd, ok := c.cmd.(*AppendCommand); ok && len(got) > 1+sizeHint(cmd) {
			t.Errorf("size hint %d below the encoded %d bytes", sizeHint(cmd), len(got)-1)
		}
	}
}
