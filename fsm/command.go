package fsm

import (
	"bytes"
	"fmt"
	"time"

	"github.com/vmihailenco/msgpack/v5"
	"github.com/vmihailenco/msgpack/v5/msgpcode"

	"github.com/tsstore/tsstore/record"
)

// CommandType is the first byte of every Raft entry the FSM applies. The
// rest of the entry is the msgpack encoding of the command's struct.
// Values are frozen: they live in Raft logs and snapshots.
type CommandType byte

const (
	CmdAppend       CommandType = 1
	CmdRegisterNode CommandType = 2
	// CmdRemoveNode tombstones one incarnation of a node (membership.go).
	CmdRemoveNode CommandType = 3
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
// EventSum, when HasEventSum, is record.AddEvent folded over Events: the
// end-to-end checksum every replica checks before writing (append.go).
// Generation, when not 0, is the run generation the writer holds: an op
// on a run's stream must carry the run's current generation (runs.go).
// Frozen: a msgpack array of 4 elements (the first version, no sum), 5
// (the sum last) or 6 (sum, or nil when there is none, then Generation).
type AppendOp struct {
	ProducerID  string
	Seq         uint64
	Events      []Event
	Expect      []Expectation
	EventSum    uint32
	HasEventSum bool
	Generation  uint64
}

// EncodeMsgpack writes the 4-, 5- or 6-element form: the shortest that
// holds the op, so ops without a generation keep the older bytes.
func (o AppendOp) EncodeMsgpack(e *msgpack.Encoder) error {
	n := 4
	if o.HasEventSum {
		n = 5
	}
	if o.Generation != 0 {
		n = 6
	}
	if err := e.EncodeArrayLen(n); err != nil {
		return err
	}
	if err := e.EncodeString(o.ProducerID); err != nil {
		return err
	}
	if err := e.EncodeUint(o.Seq); err != nil {
		return err
	}
	if err := e.Encode(o.Events); err != nil {
		return err
	}
	if err := e.Encode(o.Expect); err != nil {
		return err
	}
	if n >= 5 {
		var err error
		if o.HasEventSum {
			err = e.EncodeUint(uint64(o.EventSum))
		} else {
			err = e.EncodeNil()
		}
		if err != nil {
			return err
		}
	}
	if n == 6 {
		return e.EncodeUint(o.Generation)
	}
	return nil
}

// DecodeMsgpack reads the 4-, 5- or 6-element form.
func (o *AppendOp) DecodeMsgpack(d *msgpack.Decoder) error {
	n, err := arrayLen(d, "append op", 4, 6)
	if err != nil {
		return err
	}
	if o.ProducerID, err = d.DecodeString(); err != nil {
		return err
	}
	if o.Seq, err = d.DecodeUint64(); err != nil {
		return err
	}
	if err := d.Decode(&o.Events); err != nil {
		return err
	}
	if err := d.Decode(&o.Expect); err != nil {
		return err
	}
	if n >= 5 {
		c, err := d.PeekCode()
		if err != nil {
			return err
		}
		if c == msgpcode.Nil {
			if err := d.DecodeNil(); err != nil {
				return err
			}
		} else {
			sum, err := d.DecodeUint32()
			if err != nil {
				return err
			}
			o.EventSum, o.HasEventSum = sum, true
		}
	}
	if n == 6 {
		if o.Generation, err = d.DecodeUint64(); err != nil {
			return err
		}
		if o.Generation == 0 {
			return fmt.Errorf("msgpack: append op of 6 elements with generation 0")
		}
	}
	return nil
}

// SumEvents is record.AddEvent folded over events.
func SumEvents(events []Event) uint32 {
	var sum uint32
	for i := range events {
		ev := &events[i]
		sum = record.AddEvent(sum, ev.Stream, ev.Type, ev.Metadata, ev.Payload)
	}
	return sum
}

// AppendCommand is one Raft entry carrying one or more coalesced requests
// (group commit). Timestamp is proposed by the leader and clamped by Apply
// so that timestamps never go backwards in the log. ProducerTTL, in
// nanoseconds, is the leader's producer expiry (0: never): a producer whose
// last append is older than that at this entry's timestamp is treated as
// unknown (state.go, Producer expiry). Compression is the codec every
// replica compresses the entry's batches with (record.CompressionZstd,
// or 0: none): the leader's choice, carried in the entry so that replicas
// write the same bytes whatever their own configuration. Frozen: a
// msgpack array of 2 elements (the first version), 3 or 4.
type AppendCommand struct {
	Timestamp   int64
	Ops         []AppendOp
	ProducerTTL int64
	Compression byte
}

// EncodeMsgpack writes the 2-element form when ProducerTTL and
// Compression are 0, so such entries stay readable by the first version,
// and the 3-element form when only Compression is 0.
func (c AppendCommand) EncodeMsgpack(e *msgpack.Encoder) error {
	n := 2
	if c.ProducerTTL != 0 {
		n = 3
	}
	if c.Compression != 0 {
		n = 4
	}
	if err := e.EncodeArrayLen(n); err != nil {
		return err
	}
	if err := e.EncodeInt(c.Timestamp); err != nil {
		return err
	}
	if err := e.Encode(c.Ops); err != nil {
		return err
	}
	if n >= 3 {
		if err := e.EncodeInt(c.ProducerTTL); err != nil {
			return err
		}
	}
	if n == 4 {
		return e.EncodeUint(uint64(c.Compression))
	}
	return nil
}

// DecodeMsgpack reads a command of 2, 3 or 4 elements.
func (c *AppendCommand) DecodeMsgpack(d *msgpack.Decoder) error {
	n, err := arrayLen(d, "append command", 2, 4)
	if err != nil {
		return err
	}
	if c.Timestamp, err = d.DecodeInt64(); err != nil {
		return err
	}
	if err := d.Decode(&c.Ops); err != nil {
		return err
	}
	if n >= 3 {
		if c.ProducerTTL, err = d.DecodeInt64(); err != nil {
			return err
		}
	}
	if n == 4 {
		if c.Compression, err = d.DecodeUint8(); err != nil {
			return err
		}
		if c.Compression != record.CompressionZstd {
			return fmt.Errorf("msgpack: append command with compression %#x", c.Compression)
		}
	}
	return nil
}

// RegisterNodeCommand records a node's client-facing address and the
// incarnation of its data directory. Encoded as a msgpack array of 2
// elements (ID, APIAddress) when Incarnation is empty, the frozen format of
// the first version, or of 3 otherwise (membership.go).
type RegisterNodeCommand struct {
	ID          string
	APIAddress  string
	Incarnation string
}

// RemoveNodeCommand removes one incarnation of a node from the node table
// and leaves a tombstone, so that this incarnation can never register
// again. The server commits it before taking the node out of the Raft
// configuration. Frozen: msgpack array (ID, Incarnation).
type RemoveNodeCommand struct {
	_msgpack    struct{} `msgpack:",as_array"`
	ID          string
	Incarnation string
}

// Encode returns the Raft entry bytes for a command.
func Encode(t CommandType, cmd any) ([]byte, error) {
	// The same bytes as the type followed by msgpack.Marshal(cmd), written
	// once into a buffer sized for the command: a large append entry is
	// neither regrown nor copied.
	buf := bytes.NewBuffer(make([]byte, 0, 1+sizeHint(cmd)))
	buf.WriteByte(byte(t))
	enc := msgpack.GetEncoder()
	enc.Reset(buf)
	err := enc.Encode(cmd)
	msgpack.PutEncoder(enc)
	if err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// sizeHint is a close upper estimate of a command's encoded size.
func sizeHint(cmd any) int {
	c, ok := cmd.(*AppendCommand)
	if !ok {
		return 256
	}
	n := 64
	for i := range c.Ops {
		op := &c.Ops[i]
		n += 64 + len(op.ProducerID)
		for _, x := range op.Expect {
			n += 32 + len(x.Stream)
		}
		for j := range op.Events {
			e := &op.Events[j]
			n += 48 + len(e.Stream) + len(e.Type) + len(e.Metadata) + len(e.Payload)
		}
	}
	return n
}

func decode(data []byte, v any) error {
	if err := msgpack.Unmarshal(data[1:], v); err != nil {
		return fmt.Errorf("%w: %v", ErrUnknownCommand, err)
	}
	return nil
}

// CheckCommand decodes a command entry as Apply would, without applying
// it: `tsstore verify` runs it over every entry of the Raft log.
func CheckCommand(data []byte) error {
	if len(data) == 0 {
		return fmt.Errorf("%w: empty entry", ErrUnknownCommand)
	}
	switch CommandType(data[0]) {
	case CmdAppend:
		var cmd AppendCommand
		if err := decodeAppend(data, &cmd); err != nil {
			return err
		}
		for i := range cmd.Ops {
			if op := &cmd.Ops[i]; op.HasEventSum && SumEvents(op.Events) != op.EventSum {
				return fmt.Errorf("%w: op %d (producer %q, sequence %d)", ErrChecksumMismatch, i, op.ProducerID, op.Seq)
			}
		}
		return nil
	case CmdRegisterNode:
		var cmd RegisterNodeCommand
		return decode(data, &cmd)
	case CmdRemoveNode:
		var cmd RemoveNodeCommand
		return decode(data, &cmd)
	case CmdSetRetention:
		var cmd SetRetentionCommand
		return decode(data, &cmd)
	case CmdCompact:
		var cmd CompactCommand
		return decode(data, &cmd)
	case CmdThin:
		var cmd ThinCommand
		return decode(data, &cmd)
	case CmdDeleteStream:
		var cmd DeleteStreamCommand
		return decode(data, &cmd)
	case CmdSegmentTiered:
		var cmd SegmentTieredCommand
		return decode(data, &cmd)
	}
	return fmt.Errorf("%w: type %d", ErrUnknownCommand, data[0])
}

// DescribeCommand summarises a command entry for `tsstore dump`.
func DescribeCommand(data []byte) string {
	if len(data) == 0 {
		return "empty"
	}
	switch CommandType(data[0]) {
	case CmdAppend:
		var cmd AppendCommand
		if err := decodeAppend(data, &cmd); err != nil {
			return "append (does not decode)"
		}
		events, summed := 0, 0
		for i := range cmd.Ops {
			events += len(cmd.Ops[i].Events)
			if cmd.Ops[i].HasEventSum {
				summed++
			}
		}
		return fmt.Sprintf("append: %d ops (%d with an event checksum), %d events", len(cmd.Ops), summed, events)
	case CmdRegisterNode:
		var cmd RegisterNodeCommand
		if decode(data, &cmd) == nil {
			return fmt.Sprintf("register node %s at %s", cmd.ID, cmd.APIAddress)
		}
	case CmdRemoveNode:
		var cmd RemoveNodeCommand
		if decode(data, &cmd) == nil {
			return fmt.Sprintf("remove node %s (incarnation %s)", cmd.ID, cmd.Incarnation)
		}
	case CmdSetRetention:
		var cmd SetRetentionCommand
		if decode(data, &cmd) == nil {
			if cmd.Remove {
				return fmt.Sprintf("remove retention of %q", cmd.Prefix)
			}
			return fmt.Sprintf("set retention of %q: max age %v, max bytes %d", cmd.Prefix, time.Duration(cmd.MaxAge), cmd.MaxBytes)
		}
	case CmdCompact:
		var cmd CompactCommand
		if decode(data, &cmd) == nil {
			return fmt.Sprintf("compact: drop sealed segments below offset %d (policy version %d)", cmd.Cut, cmd.PolicyVersion)
		}
	case CmdThin:
		var cmd ThinCommand
		if decode(data, &cmd) == nil {
			return fmt.Sprintf("thin segment %d: drop %q up to offset %d but types %v (%d bytes, crc %08x after)",
				cmd.Spec.BaseOffset, cmd.Spec.Stream, cmd.Spec.Upto, cmd.Spec.Keep, cmd.Size, cmd.Digest)
		}
	case CmdDeleteStream:
		var cmd DeleteStreamCommand
		if decode(data, &cmd) == nil {
			return fmt.Sprintf("delete stream %q", cmd.Stream)
		}
	case CmdSegmentTiered:
		var cmd SegmentTieredCommand
		if decode(data, &cmd) == nil {
			return fmt.Sprintf("segment tiered: [%d, %d) as %s (%d bytes, crc32c %08x)", cmd.BaseOffset, cmd.NextOffset, cmd.Key, cmd.Size, cmd.Checksum)
		}
	}
	return fmt.Sprintf("command type %d", data[0])
}
