package fsm

import (
	"fmt"

	"github.com/vmihailenco/msgpack/v5"
)

// CommandType is the first byte of every Raft entry the FSM applies. The
// rest of the entry is the msgpack encoding of the command's struct.
// Values are frozen: they live in Raft logs and snapshots.
type CommandType byte

const (
	CmdAppend       CommandType = 1
	CmdRegisterNode CommandType = 2
)

// ExpectKind is an optimistic-concurrency rule for one stream.
type ExpectKind uint8

// Frozen: carried in Raft entries.
const (
	ExpectAny          ExpectKind = 0
	ExpectNoStream     ExpectKind = 1
	ExpectStreamExists ExpectKind = 2
	ExpectExact        ExpectKind = 3
)

// Event is one event to append.
type Event struct {
	_msgpack struct{} `msgpack:",as_array"`
	Stream   string
	Type     string
	Metadata []byte
	Payload  []byte
}

// Expectation is a check on a stream's version before an append.
type Expectation struct {
	_msgpack struct{} `msgpack:",as_array"`
	Stream   string
	Kind     ExpectKind
	Version  uint64
}

func (e Expectation) String() string {
	switch e.Kind {
	case ExpectNoStream:
		return "no-stream"
	case ExpectStreamExists:
		return "stream-exists"
	case ExpectExact:
		return fmt.Sprint(e.Version)
	default:
		return "any"
	}
}

// AppendOp is one client request: its events commit together or not at all.
type AppendOp struct {
	_msgpack   struct{} `msgpack:",as_array"`
	ProducerID string
	Seq        uint64
	Events     []Event
	Expect     []Expectation
}

// AppendCommand is one Raft entry carrying one or more coalesced requests
// (group commit). Timestamp is proposed by the leader and clamped by Apply
// so that timestamps never go backwards in the log.
type AppendCommand struct {
	_msgpack  struct{} `msgpack:",as_array"`
	Timestamp int64
	Ops       []AppendOp
}

// RegisterNodeCommand records a node's client-facing address.
type RegisterNodeCommand struct {
	_msgpack   struct{} `msgpack:",as_array"`
	ID         string
	APIAddress string
}

// Encode returns the Raft entry bytes for a command.
func Encode(t CommandType, cmd any) ([]byte, error) {
	b, err := msgpack.Marshal(cmd)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 1+len(b))
	out[0] = byte(t)
	copy(out[1:], b)
	return out, nil
}

func decode(data []byte, v any) error {
	if err := msgpack.Unmarshal(data[1:], v); err != nil {
		return fmt.Errorf("%w: %v", ErrUnknownCommand, err)
	}
	return nil
}
