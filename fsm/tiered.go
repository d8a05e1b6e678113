package fsm

import (
	"fmt"

	"github.com/vmihailenco/msgpack/v5"
)

// CmdSegmentTiered commits that the object store holds a sealed
// segment's bytes (SegmentTieredCommand; cold tiering, issue #13).
// Frozen value.
const CmdSegmentTiered CommandType = 8

// SegmentTieredCommand is the leader's "segment tiered" decision: the
// object Key holds the Size bytes of the sealed segment [BaseOffset,
// NextOffset) with CRC-32C Checksum, uploaded before the command was
// proposed. Every replica checks it against its manifest entry (range,
// size, digest) and marks the entry SegmentTiered with the key.
// Frozen: msgpack array (BaseOffset, NextOffset, Size, Checksum, Key).
type SegmentTieredCommand struct {
	_msgpack   struct{} `msgpack:",as_array"`
	BaseOffset uint64
	NextOffset uint64
	Size       int64
	Checksum   uint32
	Key        string
}

// applySegmentTiered applies a committed "segment tiered" decision. What
// it checks depends on replicated state alone, so every replica takes
// the same branch:
//
//   - the entry must be in the manifest, local or tiered, with the
//     command's range, size and digest (the object is the bytes the
//     cluster agreed on), else ErrBadTier and nothing changes;
//   - an entry already tiered under the same key changes nothing (a
//     retried commit); under another key it is ErrBadTier (the first
//     key stays: its object is the one replicas checked).
//
// The local files stay: nothing on disk changes here.
func (p *Processor) applySegmentTiered(index uint64, cmd *SegmentTieredCommand) *ApplyResult {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.retentionWM = index
	r := &p.mu.state.Retention
	i := -1
	for j := range r.Segments {
		if r.Segments[j].BaseOffset == cmd.BaseOffset {
			i = j
			break
		}
	}
	if i < 0 {
		return &ApplyResult{Err: fmt.Errorf("%w: no sealed segment at %d", ErrBadTier, cmd.BaseOffset)}
	}
	e := &r.Segments[i]
	switch {
	case e.State == SegmentDropped:
		return &ApplyResult{Err: fmt.Errorf("%w: segment %d was dropped", ErrBadTier, cmd.BaseOffset)}
	case e.NextOffset != cmd.NextOffset || e.Size != cmd.Size || e.Digest != cmd.Checksum:
		return &ApplyResult{Err: fmt.Errorf("%w: segment %d is [%d, %d) of %d bytes, crc32c %08x; the object %s is [%d, %d) of %d bytes, crc32c %08x",
			ErrBadTier, cmd.BaseOffset, e.BaseOffset, e.NextOffset, e.Size, e.Digest, cmd.Key, cmd.BaseOffset, cmd.NextOffset, cmd.Size, cmd.Checksum)}
	case cmd.Key == "":
		return &ApplyResult{Err: fmt.Errorf("%w: segment %d: empty object key", ErrBadTier, cmd.BaseOffset)}
	case e.State == SegmentTiered && e.Key == cmd.Key:
		return &ApplyResult{}
	case e.State == SegmentTiered:
		return &ApplyResult{Err: fmt.Errorf("%w: segment %d is tiered as %s already, not %s", ErrBadTier, cmd.BaseOffset, e.Key, cmd.Key)}
	}
	e.State, e.Key = SegmentTiered, cmd.Key
	return &ApplyResult{}
}

// EncodeMsgpack writes the 6-element form, or 7 with a Key.
func (m ManifestEntry) EncodeMsgpack(e *msgpack.Encoder) error {
	n := 6
	if m.Key != "" {
		n = 7
	}
	if err := e.EncodeArrayLen(n); err != nil {
		return err
	}
	for _, v := range []any{m.BaseOffset, m.NextOffset, m.Size, m.Digest, m.LastTimestamp, m.State} {
		if err := e.Encode(v); err != nil {
			return err
		}
	}
	if n == 7 {
		return e.EncodeString(m.Key)
	}
	return nil
}

// DecodeMsgpack reads the 6- or 7-element form.
func (m *ManifestEntry) DecodeMsgpack(d *msgpack.Decoder) error {
	n, err := arrayLen(d, "manifest entry", 6, 7)
	if err != nil {
		return err
	}
	for _, v := range []any{&m.BaseOffset, &m.NextOffset, &m.Size, &m.Digest, &m.LastTimestamp, &m.State} {
		if err := d.Decode(v); err != nil {
			return err
		}
	}
	m.Key = ""
	if n == 7 {
		if m.Key, err = d.DecodeString(); err != nil {
			return err
		}
		if m.Key == "" {
			return fmt.Errorf("msgpack: manifest entry of 7 elements with an empty key")
		}
	}
	return nil
}
