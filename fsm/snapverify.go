package fsm

import (
	"bytes"
	"fmt"
	"io"

	"github.com/tsstore/tsstore/record"
	"github.com/tsstore/tsstore/segment"
)

// VerifySnapshotStream returns a reader that yields the snapshot stream r
// unchanged while it checks it: the header, then every segment's bytes are
// whole batches whose CRCs verify, with contiguous offsets from the
// segment's base offset to its next offset, exactly its size; a tiered
// segment's part (version 2) has a marker that names its reference. The first
// problem is returned by Read (instead of the bytes that show it) as a
// *segment.CorruptionError naming the segment file by its base offset,
// the position in it and the offset; a stream that ends early is
// ErrBadSnapshot. A backup that reads through it never finishes with bytes
// a restore would refuse.
func VerifySnapshotStream(r io.Reader) io.Reader {
	return &snapVerifier{r: r}
}

type snapVerifier struct {
	r      io.Reader
	header bool
	segs   []segmentRef
	// The segment being checked: seg indexes segs, pos is the position
	// in it of pending[0], next the offset its next batch must start at.
	seg     int
	pos     int64
	next    uint64
	pending []byte
	err     error
}

func (v *snapVerifier) Read(p []byte) (int, error) {
	if v.err != nil {
		return 0, v.err
	}
	if !v.header {
		var seen bytes.Buffer
		h, err := readSnapshotHeader(io.TeeReader(v.r, &seen))
		if err != nil {
			v.err = err
			return 0, err
		}
		v.header, v.segs = true, h.Segments
		if len(v.segs) > 0 {
			v.next = v.segs[0].BaseOffset
		}
		v.r = io.MultiReader(&seen, &headerless{v: v, r: v.r})
	}
	n, err := v.r.Read(p)
	if err == io.EOF && v.err == nil && v.seg < len(v.segs) {
		v.err = fmt.Errorf("%w: stream ends inside segment %s", ErrBadSnapshot, segment.FileName(v.segs[v.seg].BaseOffset))
	}
	if v.err != nil {
		return 0, v.err
	}
	return n, err
}

// headerless checks the segment bytes that follow the header as they pass.
type headerless struct {
	v *snapVerifier
	r io.Reader
}

func (h *headerless) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	if n > 0 {
		if cerr := h.v.check(p[:n]); cerr != nil {
			h.v.err = cerr
			return 0, cerr
		}
	}
	return n, err
}

// check takes the next bytes of the segment data and verifies every batch
// they complete.
func (v *snapVerifier) check(b []byte) error {
	for len(b) > 0 {
		if v.seg >= len(v.segs) {
			return fmt.Errorf("%w: %d bytes after the last segment", ErrBadSnapshot, len(b))
		}
		s := v.segs[v.seg]
		if s.Tiered != nil {
			var err error
			if b, err = v.checkTiered(s, b); err != nil {
				return err
			}
			continue
		}
		left := s.Size - v.pos - int64(len(v.pending))
		take := min(int64(len(b)), left)
		v.pending = append(v.pending, b[:take]...)
		b = b[take:]
		if err := v.verifyPending(s); err != nil {
			return err
		}
		if v.pos+int64(len(v.pending)) == s.Size {
			if len(v.pending) > 0 {
				return v.corrupt(s, "the segment ends inside a batch")
			}
			if v.next != s.NextOffset {
				return v.corrupt(s, fmt.Sprintf("the segment ends at offset %d, the snapshot says %d", v.next, s.NextOffset))
			}
			v.seg, v.pos, v.pending = v.seg+1, 0, v.pending[:0]
			if v.seg < len(v.segs) {
				v.next = v.segs[v.seg].BaseOffset
			}
		}
	}
	return nil
}

// checkTiered takes the next bytes of a tiered segment's part (its local
// files) and returns the rest: the marker is checked against the
// reference (its CRC, key, size, checksum, end); the index files pass,
// Restore checks them when it installs them.
func (v *snapVerifier) checkTiered(s segmentRef, b []byte) ([]byte, error) {
	m := s.Tiered.Files[0]
	take := min(int64(len(b)), s.bodySize()-v.pos)
	if v.pos < m {
		k := min(take, m-v.pos)
		v.pending = append(v.pending, b[:k]...)
		if v.pos+k == m {
			if err := segment.CheckMarker(v.pending, s.BaseOffset, s.remoteRef(), s.NextOffset); err != nil {
				return nil, &segment.CorruptionError{Path: segment.FileName(s.BaseOffset), Key: s.Tiered.Key, Offset: s.BaseOffset,
					Reason: "in the snapshot stream: " + err.Error()}
			}
			v.pending = nil
		}
	}
	v.pos += take
	if v.pos == s.bodySize() {
		v.seg, v.pos = v.seg+1, 0
		if v.seg < len(v.segs) {
			v.next = v.segs[v.seg].BaseOffset
		}
	}
	return b[take:], nil
}

// verifyPending verifies and drops every whole batch at the front of
// pending.
func (v *snapVerifier) verifyPending(s segmentRef) error {
	for len(v.pending) >= record.HeaderSize {
		h, err := record.ParseHeader(v.pending)
		if err != nil {
			return v.corrupt(s, err.Error())
		}
		if len(v.pending) < h.Size() {
			return nil
		}
		if _, err := record.Verify(v.pending[:h.Size()]); err != nil {
			return v.corrupt(s, err.Error())
		}
		if h.BaseOffset != v.next {
			return v.corrupt(s, fmt.Sprintf("batch starts at offset %d, want %d", h.BaseOffset, v.next))
		}
		v.next = h.NextOffset()
		v.pos += int64(h.Size())
		v.pending = v.pending[h.Size():]
	}
	if len(v.pending) == 0 {
		v.pending = nil // let a large batch's buffer go
	}
	return nil
}

func (v *snapVerifier) corrupt(s segmentRef, reason string) error {
	return &segment.CorruptionError{Path: segment.FileName(s.BaseOffset), Position: v.pos, Offset: v.next,
		Reason: "in the snapshot stream: " + reason}
}
