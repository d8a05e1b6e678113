package segment

import (
	"errors"
	"fmt"
	"io"

	"github.com/tsstore/tsstore/record"
)

// scanBufSize is the read size of a sequential scan.
const scanBufSize = 1 << 20

// scanner reads a segment file batch by batch through a reusable buffer.
// It checks headers only; callers verify CRCs and records as they need.
type scanner struct {
	f    File
	pos  int64 // file position of buf[r]
	end  int64 // scan stops here
	buf  []byte
	r, w int // unread bytes are buf[r:w]
}

func newScanner(f File, pos, end int64, bufSize int) *scanner {
	return &scanner{f: f, pos: pos, end: end, buf: make([]byte, bufSize)}
}

// next returns the batch at the scan position and advances past it. The
// batch aliases the scanner's buffer until the next call. At end it
// returns io.EOF. If the bytes left before end cannot hold the batch it
// returns an error wrapping record.ErrShort; an impossible header wraps
// record.ErrCorrupt. Other errors are I/O errors.
func (s *scanner) next() (pos int64, b []byte, h record.Header, err error) {
	pos = s.pos
	if s.pos >= s.end {
		return pos, nil, h, io.EOF
	}
	if err := s.fill(record.HeaderSize); err != nil {
		return pos, nil, h, err
	}
	h, err = record.ParseHeader(s.buf[s.r:s.w])
	if err != nil {
		return pos, nil, h, err
	}
	size := h.Size()
	if s.end-s.pos < int64(size) {
		return pos, nil, h, fmt.Errorf("%w: batch of %d bytes, %d left in file", record.ErrShort, size, s.end-s.pos)
	}
	if err := s.fill(size); err != nil {
		return pos, nil, h, err
	}
	b = s.buf[s.r : s.r+size]
	s.r += size
	s.pos += int64(size)
	return pos, b, h, nil
}

// fill buffers at least n bytes, or all that is left before end.
func (s *scanner) fill(n int) error {
	n = int(min(int64(n), s.end-s.pos))
	if s.w-s.r >= n {
		return nil
	}
	copy(s.buf, s.buf[s.r:s.w])
	s.w -= s.r
	s.r = 0
	if len(s.buf) < n {
		nb := make([]byte, n)
		copy(nb, s.buf[:s.w])
		s.buf = nb
	}
	want := int(min(int64(len(s.buf)-s.w), s.end-s.pos-int64(s.w)))
	m, err := s.f.ReadAt(s.buf[s.w:s.w+want], s.pos+int64(s.w))
	s.w += m
	if m < want {
		if err == nil || errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("segment: read at %d: %w", s.pos, err)
	}
	return nil
}
