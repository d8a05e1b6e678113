package segment

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/tsstore/tsstore/record"
)

// Dump writes the structure of one .log file to w: one line per batch
// with its file position, offsets, record count, Raft index, timestamp,
// size and CRC status, then a summary. It keeps going past a bad CRC (the
// length field still says where the next batch starts) and stops at an
// unreadable header or a torn tail. It is what `tsstore dump` prints.
func Dump(path string, w io.Writer) error {
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
		if _, err := record.Verify(raw); err != nil {
			status, bad = "BAD", bad+1
		} else if err := checkRecords(raw); err != nil {
			status, bad = "BAD-RECORDS", bad+1
		}
		if (!first || nameErr == nil) && h.BaseOffset != expect {
			status += fmt.Sprintf(" (want base %d)", expect)
		}
		ts := time.Unix(0, h.Timestamp).UTC().Format(time.RFC3339Nano)
		p.printf("%10d %12d %12d %6d %10d %-30s %8d %s\n", pos, h.BaseOffset, h.LastOffset(), h.RecordCount, h.RaftIndex, ts, h.Size(), status)
		batches++
		records += int64(h.RecordCount)
		expect, first = h.NextOffset(), false
	}
	p.printf("summary: %d batches, %d records, next offset %d, %d problems\n", batches, records, expect, bad)
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
