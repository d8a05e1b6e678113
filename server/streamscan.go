package server

import (
	"errors"

	"github.com/tsstore/tsstore/record"
	"github.com/tsstore/tsstore/segment"
)

// scanStreamBatches is StreamBatches by brute force: it reads every batch
// from `from` and keeps those holding a record of stream. It is the
// baseline the per-stream index is measured against.
func scanStreamBatches(l *segment.Log, dst []byte, stream string, from uint64, maxBytes int) ([]byte, uint64, error) {
	start := len(dst)
	next := from
	buf := make([]byte, 0, 1<<20)
	for next < l.NextOffset() && len(dst)-start < maxBytes {
		var err error
		buf, next, err = l.ReadBatches(buf[:0], next, 1<<20)
		if err != nil {
			return dst, from, err
		}
		for raw := buf; len(raw) > 0; {
			b, rest, err := record.Next(raw)
			if err != nil {
				return dst, from, err
			}
			raw = rest
			if hasStream(b, stream) {
				dst = append(dst, b...)
			}
		}
	}
	return dst, next, nil
}

func hasStream(b record.Batch, stream string) bool {
	it := b.Records()
	var r record.Record
	for it.Next(&r) {
		if string(r.Stream) == stream {
			return true
		}
	}
	return false
}

var errFound = errors.New("found")

// scanStreamOffset finds the offset of a stream version by brute force.
func scanStreamOffset(l *segment.Log, stream string, version uint64) (uint64, bool, error) {
	var off uint64
	err := l.Scan(0, func(b record.Batch) error {
		it := b.Records()
		var r record.Record
		for it.Next(&r) {
			if string(r.Stream) == stream && r.StreamVersion >= version {
				off = r.Offset
				return errFound
			}
		}
		return it.Err()
	})
	if errors.Is(err, errFound) {
		return off, true, nil
	}
	return 0, false, err
}
