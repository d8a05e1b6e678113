package segment

import (
	"encoding/json"
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
// instead (DumpStreams), given a .tiered marker the marker's fields
// (DumpTiered), and given an index bundle (.idx) its structure
// (DumpIndexBundle). It is what `tsstore dump` prints.
func Dump(path string, w io.Writer) error {
	if strings.HasSuffix(path, StreamsSuffix) {
		return DumpStreams(path, w)
	}
	if strings.HasSuffix(path, TieredSuffix) {
		return DumpTiered(path, w)
	}
	if strings.HasSuffix(path, IndexBundleSuffix) {
		return DumpIndexBundle(path, w)
	}
	d, err := DumpLog(path)
	if err != nil {
		return err
	}
	p := &printer{w: w}
	if d.BaseOffset == nil {
		p.printf("file %s: %d bytes (name does not give a base offset)\n", d.File, d.Size)
	} else {
		p.printf("file %s: %d bytes, base offset %d\n", d.File, d.Size, *d.BaseOffset)
	}
	p.printf("%10s %12s %12s %6s %10s %-30s %8s %s\n", "position", "base", "last", "count", "raft", "timestamp", "size", "crc")
	for _, b := range d.Batches {
		status := b.CRC
		if b.WantBase != nil {
			status += fmt.Sprintf(" (want base %d)", *b.WantBase)
		}
		ts := time.Unix(0, b.Timestamp).UTC().Format(time.RFC3339Nano)
		p.printf("%10d %12d %12d %6d %10d %-30s %8d %s\n", b.Position, b.BaseOffset, b.LastOffset, b.Count, b.RaftIndex, ts, b.Size, status)
		for _, bs := range b.Streams {
			p.printf("%10s stream %q versions %d..%d\n", "", bs.Stream, bs.FirstVersion, bs.LastVersion)
		}
	}
	if t := d.Tail; t != nil {
		if t.Torn {
			p.printf("%10d torn tail: %d bytes do not hold a complete batch\n", t.Position, t.Bytes)
		} else {
			p.printf("%10d unreadable header: %s\n", t.Position, t.Error)
		}
	}
	p.printf("summary: %d batches, %d records, next offset %d, %d problems\n", len(d.Batches), d.Records, d.NextOffset, d.Problems)
	return p.err
}

// LogDump is the structure of one .log file, as DumpLog reads it.
type LogDump struct {
	File string `json:"file"`
	Size int64  `json:"size"`
	// BaseOffset is the base offset the file name gives; nil if it gives none.
	BaseOffset *uint64     `json:"base_offset"`
	Batches    []BatchDump `json:"batches"`
	// Tail describes where the scan stopped early, if it did.
	Tail       *TailDump `json:"tail,omitempty"`
	Records    int64     `json:"records"`
	NextOffset uint64    `json:"next_offset"`
	// Problems counts bad batches, batches that do not start where the
	// previous one ended (WantBase) and an unreadable tail.
	Problems int64 `json:"problems"`
}

// BatchDump is one batch of a LogDump.
type BatchDump struct {
	Position   int64  `json:"position"`
	BaseOffset uint64 `json:"base_offset"`
	LastOffset uint64 `json:"last_offset"`
	Count      uint32 `json:"count"`
	RaftIndex  uint64 `json:"raft_index"`
	Timestamp  int64  `json:"timestamp_unix_nano"`
	Size       int    `json:"size"`
	// CRC is "ok", "BAD" (checksum mismatch) or "BAD-RECORDS" (the
	// checksum holds but the records do not decode).
	CRC string `json:"crc"`
	// WantBase is set when the batch does not start where the previous
	// one ended: the base offset expected there.
	WantBase *uint64        `json:"want_base,omitempty"`
	Streams  []StreamInDump `json:"streams,omitempty"`
}

// StreamInDump is what the stream index records for one stream of a batch.
type StreamInDump struct {
	Stream       string `json:"stream"`
	FirstVersion uint64 `json:"first_version"`
	LastVersion  uint64 `json:"last_version"`
}

// TailDump says why a scan stopped before the end of the file.
type TailDump struct {
	Position int64 `json:"position"`
	// Torn: the last Bytes bytes do not hold a complete batch (a crash).
	Torn  bool   `json:"torn"`
	Bytes int64  `json:"bytes"`
	Error string `json:"error,omitempty"`
}

// DumpLog reads the structure of one .log file, as Dump prints it.
func DumpLog(path string) (*LogDump, error) {
	f, err := OSFS{}.OpenFile(path, os.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	d := &LogDump{File: filepath.Base(path), Size: fi.Size()}
	base, nameErr := parseLogName(filepath.Base(path))
	if nameErr == nil {
		d.BaseOffset = &base
	}
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
				return nil, err
			}
			d.Tail = &TailDump{Position: pos, Torn: errors.Is(err, record.ErrShort), Bytes: fi.Size() - pos}
			if !d.Tail.Torn {
				d.Tail.Error = err.Error()
			}
			d.Problems++
			break
		}
		b := BatchDump{Position: pos, BaseOffset: h.BaseOffset, LastOffset: h.LastOffset(), Count: h.RecordCount,
			RaftIndex: h.RaftIndex, Timestamp: h.Timestamp, Size: h.Size(), CRC: "ok"}
		var streams []batchStream
		if _, err := record.Verify(raw); err != nil {
			b.CRC, d.Problems = "BAD", d.Problems+1
		} else if streams, err = c.collect(raw); err != nil {
			b.CRC, d.Problems, streams = "BAD-RECORDS", d.Problems+1, nil
		}
		if (!first || nameErr == nil) && h.BaseOffset != expect {
			want := expect
			b.WantBase, d.Problems = &want, d.Problems+1
		}
		for _, bs := range streams {
			b.Streams = append(b.Streams, StreamInDump{Stream: string(bs.name), FirstVersion: bs.first, LastVersion: bs.last})
		}
		d.Batches = append(d.Batches, b)
		d.Records += int64(h.RecordCount)
		expect, first = h.NextOffset(), false
	}
	d.NextOffset = expect
	return d, nil
}

// DumpJSON writes DumpLog's result for path to w as JSON.
func DumpJSON(path string, w io.Writer) error {
	d, err := DumpLog(path)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(d)
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

// DumpTiered writes the fields of one .tiered marker (a segment whose
// .log was evicted to the tier target) to w. The marker must decode and
// pass its checks; otherwise the error says what is wrong.
func DumpTiered(path string, w io.Writer) error {
	data, err := readWhole(OSFS{}, path, tieredFixed+MaxTieredKey+4)
	if err != nil {
		return err
	}
	base, ok := parseBase(filepath.Base(path), TieredSuffix)
	if !ok {
		return fmt.Errorf("segment: %s: the name does not give a base offset", path)
	}
	m, err := decodeMarker(data, base)
	if err != nil {
		return fmt.Errorf("segment: %s: %w", path, err)
	}
	p := &printer{w: w}
	p.printf("file %s: %d bytes, tiered segment [%d, %d), %d bytes, crc32c %08x\n", filepath.Base(path), len(data), m.base, m.last.NextOffset(), m.size, m.sum)
	p.printf("object %s\n", m.key)
	p.printf("first timestamp %s, last batch at offset %d (raft index %d, timestamp %s)\n",
		time.Unix(0, m.firstTS).UTC().Format(time.RFC3339Nano), m.last.BaseOffset, m.last.RaftIndex, time.Unix(0, m.last.Timestamp).UTC().Format(time.RFC3339Nano))
	return p.err
}
