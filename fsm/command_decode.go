package fsm

import (
	"encoding/binary"

	"github.com/tsstore/tsstore/record"
)

// decodeAppend decodes an append entry (type byte, then the msgpack array
// encoding of AppendCommand) without reflection, on every replica's apply
// path. Event payloads and metadata alias data, which must not change
// while cmd is in use (Apply copies them into record batches). Repeated
// stream names and types within the entry share one string. Anything the
// fast path does not expect (another encoding of a value, extra fields)
// goes to the reflection decoder, so the result is always what
// msgpack.Unmarshal gives (up to nil versus empty byte slices).
func decodeAppend(data []byte, cmd *AppendCommand) error {
	d := rawDecoder{b: data[1:]}
	if d.appendCommand(cmd) && !d.bad && len(d.b) == 0 {
		return nil
	}
	*cmd = AppendCommand{}
	return decode(data, cmd)
}

// rawDecoder reads msgpack values from b; bad is set (and zero values
// returned) on anything unexpected.
type rawDecoder struct {
	b   []byte
	bad bool
	// interned strings: the last stream, type and producer seen
	stream, typ, producer string
}

func (d *rawDecoder) appendCommand(cmd *AppendCommand) bool {
	fields := d.arrayLen()
	if fields < 2 || fields > 4 {
		return false
	}
	cmd.Timestamp = d.int()
	n := d.arrayLen()
	switch {
	case d.bad || n < -1:
		return false
	case n >= 0:
		cmd.Ops = make([]AppendOp, n)
		for i := range cmd.Ops {
			if !d.appendOp(&cmd.Ops[i]) {
				return false
			}
		}
	}
	if fields >= 3 {
		cmd.ProducerTTL = d.int()
	}
	if fields == 4 {
		c := d.int()
		if c != int64(record.CompressionZstd) {
			return false // the msgpack decoder says what is wrong
		}
		cmd.Compression = byte(c)
	}
	return !d.bad
}

func (d *rawDecoder) appendOp(op *AppendOp) bool {
	fields := d.arrayLen()
	if fields < 4 || fields > 6 {
		return false
	}
	op.ProducerID = d.str(&d.producer)
	op.Seq = uint64(d.int())
	if n := d.arrayLen(); n > 0 && !d.bad {
		op.Events = make([]Event, n)
		for i := range op.Events {
			ev := &op.Events[i]
			if d.arrayLen() != 4 {
				return false
			}
			ev.Stream = d.str(&d.stream)
			ev.Type = d.str(&d.typ)
			ev.Metadata = d.bin()
			ev.Payload = d.bin()
		}
	}
	if n := d.arrayLen(); n > 0 && !d.bad {
		op.Expect = make([]Expectation, n)
		for i := range op.Expect {
			x := &op.Expect[i]
			if d.arrayLen() != 3 {
				return false
			}
			var none string
			x.Stream = d.str(&none)
			x.Kind = ExpectKind(d.int())
			x.Version = uint64(d.int())
		}
	}
	if fields >= 5 {
		if d.peekNil() {
			d.take(1)
		} else {
			sum := d.int()
			op.EventSum, op.HasEventSum = uint32(sum), true
			if sum < 0 || sum > 1<<32-1 {
				return false
			}
		}
	}
	if fields == 6 {
		if op.Generation = uint64(d.int()); op.Generation == 0 {
			return false
		}
	}
	return !d.bad
}

// take returns the next n bytes.
func (d *rawDecoder) take(n int) []byte {
	if d.bad || n < 0 || n > len(d.b) {
		d.bad = true
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

// peekNil reports whether the next value is nil, without consuming it.
func (d *rawDecoder) peekNil() bool { return !d.bad && len(d.b) > 0 && d.b[0] == 0xc0 }

func (d *rawDecoder) code() byte {
	c := d.take(1)
	if c == nil {
		return 0xc1 // never used by msgpack
	}
	return c[0]
}

// arrayLen reads an array header; -1 for nil.
func (d *rawDecoder) arrayLen() int {
	switch c := d.code(); {
	case c >= 0x90 && c <= 0x9f:
		return int(c & 0x0f)
	case c == 0xdc:
		return int(binary.BigEndian.Uint16(d.take(2)))
	case c == 0xdd:
		return d.len32()
	case c == 0xc0:
		return -1
	}
	d.bad = true
	return 0
}

func (d *rawDecoder) len32() int {
	b := d.take(4)
	if b == nil {
		return 0
	}
	return int(binary.BigEndian.Uint32(b))
}

// int reads any msgpack integer as int64 (uint64 values wrap, as the
// reflection decoder does for the uint64 fields read through it).
func (d *rawDecoder) int() int64 {
	c := d.code()
	switch {
	case c <= 0x7f:
		return int64(c)
	case c >= 0xe0:
		return int64(int8(c))
	}
	switch c {
	case 0xcc:
		if b := d.take(1); b != nil {
			return int64(b[0])
		}
	case 0xcd:
		if b := d.take(2); b != nil {
			return int64(binary.BigEndian.Uint16(b))
		}
	case 0xce:
		if b := d.take(4); b != nil {
			return int64(binary.BigEndian.Uint32(b))
		}
	case 0xcf:
		if b := d.take(8); b != nil {
			return int64(binary.BigEndian.Uint64(b))
		}
	case 0xd0:
		if b := d.take(1); b != nil {
			return int64(int8(b[0]))
		}
	case 0xd1:
		if b := d.take(2); b != nil {
			return int64(int16(binary.BigEndian.Uint16(b)))
		}
	case 0xd2:
		if b := d.take(4); b != nil {
			return int64(int32(binary.BigEndian.Uint32(b)))
		}
	case 0xd3:
		if b := d.take(8); b != nil {
			return int64(binary.BigEndian.Uint64(b))
		}
	default:
		d.bad = true
	}
	return 0
}

// str reads a string; if it equals *last it returns *last without
// allocating, otherwise it becomes *last.
func (d *rawDecoder) str(last *string) string {
	var n int
	switch c := d.code(); {
	case c >= 0xa0 && c <= 0xbf:
		n = int(c & 0x1f)
	case c == 0xd9:
		if b := d.take(1); b != nil {
			n = int(b[0])
		}
	case c == 0xda:
		if b := d.take(2); b != nil {
			n = int(binary.BigEndian.Uint16(b))
		}
	case c == 0xdb:
		n = d.len32()
	case c == 0xc0:
		return ""
	default:
		d.bad = true
		return ""
	}
	b := d.take(n)
	if string(b) == *last { // no allocation
		return *last
	}
	*last = string(b)
	return *last
}

// bin reads a byte slice, aliasing the input; nil for msgpack nil.
func (d *rawDecoder) bin() []byte {
	var n int
	switch c := d.code(); c {
	case 0xc4:
		if b := d.take(1); b != nil {
			n = int(b[0])
		}
	case 0xc5:
		if b := d.take(2); b != nil {
			n = int(binary.BigEndian.Uint16(b))
		}
	case 0xc6:
		n = d.len32()
	case 0xc0:
		return nil
	default:
		d.bad = true
		return nil
	}
	if b := d.take(n); n > 0 {
		return b
	}
	return []byte{} // empty, not nil, as the reflection decoder gives
}
