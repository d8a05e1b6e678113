package segment

import (
	"io"

	"github.com/tsstore/tsstore/record"
)

// walkedBatch is one batch handed out by walkBatches. Raw aliases the
// walker's buffer and Streams its collector's result: both are valid
// during the callback only.
type walkedBatch struct {
	Pos     int64 // file position of the batch
	Raw     []byte
	Header  record.Header
	Streams []batchStream // the batch's streams, when the walk decodes
}

// walkBatches is the one batch walker of the package: Open (the active
// segment, sealed segments' tails and rebuilds), Verify, VerifySegment and
// ReplaceSealed all read a segment through it. It reads the batches of f
// from pos to end and checks each: a header that parses, the whole batch
// before end, its CRC, its base offset contiguous from expect and, when
// decode is set, every record decodes (Streams is then the batch's
// streams, for the stream index). fn is called with each good batch.
//
// A bad batch stops the walk with a *CorruptionError naming path and the
// batch's position (a torn tail is one too: callers that may cut it, the
// active segment's recovery, tell it by errors.As). I/O errors are returned
// wrapped; an error from fn is returned as is.
func walkBatches(f File, path string, pos, end int64, expect uint64, decode bool, fn func(b walkedBatch) error) error {
	sc := newScanner(f, pos, end, int(min(scanBufSize, max(end-pos, record.HeaderSize))))
	var c streamCollector
	for {
		pos, raw, h, err := sc.next()
		if err == io.EOF {
			return nil
		}
		if err == nil {
			_, err = record.Verify(raw)
		}
		var streams []batchStream
		if err == nil && decode {
			streams, err = c.collect(raw)
		}
		if err != nil {
			return scanError(path, pos, expect, err)
		}
		if h.BaseOffset != expect {
			return corruptf(path, pos, expect, "batch base offset %d, want %d", h.BaseOffset, expect)
		}
		if err := fn(walkedBatch{Pos: pos, Raw: raw, Header: h, Streams: streams}); err != nil {
			return err
		}
		expect = h.NextOffset()
	}
}
