package segment

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/tsstore/tsstore/record"
)

// Dump writes the structure of one .log file to w: one line per batch
// with its file position, offsets, record count, Raft index, timestamp,
// size and CRC status, followed by one line per stream the batch holds
// (what the stream index records for it), then a summary. It keeps going
// past a bad CRC (the length field still says where the next batch
// starts) and stops at an unreadable header or a torn tail. Given a
// .streams file it prints that file's header, directory and entries
// instead (DumpStreams). It is what `tsstore dump` prints.
func Dump(path string, w io.Writer) error {
	if strings.HasSuffix(path, StreamsSuffix) {
		return DumpStreams(path, w)
	}
	f, err := OSFS{}.OpenFile(path, os.O_RDONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	base, nameErr := parseLogName(filepath.Base(path))
	p := &printer{w: w}
	if nameErr != nil {
		p.printf("file %s: %d bytes (name does not give a base offset)\n", filepath.Base(path), fi.Size())
	} else {
		p.printf("file %s: %d bytes, base offset %d\n", filepath.Base(path), fi.Size(), base)
	}
	p.printf("%10s %12s %12s %6s %10s %-30s %8s %s\n", "position", "base", "last", "count", "raft", "timestamp", "size", "crc")
	var batches, records, bad int64
	expect, first := base, true
	sc := newScanner(f, 0, fi.Size(), scanBufSize)
	var c streamCollector
	for {
		pos, raw, h, err := sc.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			if !errors.Is(err, record.ErrShort) && !errors.Is(err, record.ErrCorrupt) {
				return err
			}
			if errors.Is(err, record.ErrShort) {
				p.printf("%10d torn tail: %d bytes do not hold a complete batch\n", pos, fi.Size()-pos)
			} else {
				p.printf("%10d unreadable header: %v\n", pos, err)
			}
			bad++
			break
		}
		status := "ok"
		var streams []batchStream
		if _, err := record.Verify(raw); err != nil {
			status, bad = "BAD", bad+1
		} else if streams, err = c.collect(raw); err != nil {
			status, bad, streams = "BAD-RECORDS", bad+1, nil
		}
		if (!first || nameErr == nil) && h.BaseOffset != expect {
			status += fmt.Sprintf(" (want base %d)", expect)
		}
		ts := time.Unix(0, h.Timestamp).UTC().Format(time.RFC3339Nano)
		p.printf("%10d %12d %12d %6d %10d %-30s %8d %s\n", pos, h.BaseOffset, h.LastOffset(), h.RecordCount, h.RaftIndex, ts, h.Size(), status)
		for _, bs := range streams {
			p.printf("%10s stream %q versions %d..%d\n", "", bs.name, bs.first, bs.last)
		}
		batches++
		records += int64(h.RecordCount)
		expect, first = h.NextOffset(), false
	}
	p.printf("summary: %d batches, %d records, next offset %d, %d problems\n", batches, records, expect, bad)
	return p.err
}

// DumpStreams writes the structure of one .streams file to w: its header,
// then per stream its directory record and entries. The file must decode
// and pass every check; otherwise the error says what is wrong.
func DumpStreams(path string, w io.Writer) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	sf, err := decodeStreamsFile(data)
	if err != nil {
		return fmt.Errorf("segment: %s: %w", path, err)
	}
	h := sf.header
	p := &printer{w: w}
	p.printf("file %s: %d bytes, base offset %d, next offset %d, log size %d\n", filepath.Base(path), len(data), h.base, h.next, h.logSize)
	p.printf("%d streams, %d entries, directory %d bytes\n", h.streams, h.entries, h.dirSize)
	for _, d := range sf.dirs {
		p.printf("stream %q: %d entries, versions %d..%d, offsets [%d, %d)", d.name, d.count, d.minVer, d.maxVer, d.firstOffset, d.endOffset)
		if d.flags&streamFlagUnordered != 0 {
			p.printf(", versions out of order")
		}
		p.printf("\n")
		for _, e := range sf.entries[d.first : d.first+d.count] {
			p.printf("  offset %12d  span %6d  position %10d  size %8d  versions %d..%d\n",
				h.base+uint64(e.rel), uint64(e.span)+1, e.pos, e.size, e.first, e.last)
		}
	}
	return p.err
}

// printer remembers the first write error.
type printer struct {
	w   io.Writer
	err error
}

func (p *printer) printf(format string, args ...any) {
	if p.err == nil {
		_, p.err = fmt.Fprintf(p.w, format, args...)
	}
}
