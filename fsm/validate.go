package fsm

import "github.com/tsstore/tsstore/record"

// MaxStreamNameLen bounds stream names. The charset is ASCII letters,
// digits and ._-/:=@+ ; the first character is a letter or digit.
const MaxStreamNameLen = 200

// ValidateStreamName reports whether name is a legal stream name.
func ValidateStreamName(name string) error {
	if name == "" {
		return invalidf("empty stream name")
	}
	if len(name) > MaxStreamNameLen {
		return invalidf("stream name of %d bytes exceeds %d", len(name), MaxStreamNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if alnum {
			continue
		}
		if i == 0 {
			return invalidf("stream name %q must start with a letter or digit", name)
		}
		switch c {
		case '.', '_', '-', '/', ':', '=', '@', '+':
		default:
			return invalidf("stream name %q: character %q not allowed", name, c)
		}
	}
	return nil
}

// ValidateOp checks the rules every replica enforces identically: they
// depend only on the op, never on node configuration. Size limits that an
// operator configures are checked by the server before proposing.
func ValidateOp(op *AppendOp) error {
	if len(op.Events) == 0 {
		return invalidf("empty append")
	}
	if len(op.ProducerID) > record.MaxNameLen {
		return invalidf("producer id of %d bytes exceeds %d", len(op.ProducerID), record.MaxNameLen)
	}
	if op.ProducerID != "" && op.Seq == 0 {
		return invalidf("producer %q: sequence numbers start at 1", op.ProducerID)
	}
	for i := range op.Events {
		ev := &op.Events[i]
		if ev.Stream == SnapshotStream && ev.Type == SnapshotType {
			// The one system stream (runs.go); checkRun checks the rest.
		} else if err := ValidateStreamName(ev.Stream); err != nil {
			return err
		}
		if ev.Type == "" || len(ev.Type) > record.MaxNameLen {
			return invalidf("event %d: type must be 1..%d bytes", i, record.MaxNameLen)
		}
	}
	for _, e := range op.Expect {
		if err := ValidateStreamName(e.Stream); err != nil {
			return err
		}
		if e.Kind > ExpectExact {
			return invalidf("unknown expected-version kind %d", e.Kind)
		}
	}
	return nil
}
