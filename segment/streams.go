package segment

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"slices"
	"strings"

	"github.com/tsstore/tsstore/record"
)

// Frozen .streams format constants. See the package documentation for the
// layout; changing any of them breaks existing data directories.
const (
	// StreamsSuffix names a sealed segment's per-stream index file.
	StreamsSuffix = ".streams"
	// StreamsMagic opens every .streams file.
	StreamsMagic = "TSSI"
	// StreamsVersion is the version byte of the layout drawn in doc.go.
	StreamsVersion = 1
	// StreamsHeaderSize is the size of the fixed .streams header.
	StreamsHeaderSize = 52
	// StreamEntrySize is the size of one .streams entry:
	// [rel u32][pos u32][size u32][last delta u32][first ver u64][last ver u64].
	StreamEntrySize = 32
	// StreamsBlockEntries is the number of entries per checksummed block;
	// only the last block of a file may hold fewer.
	StreamsBlockEntries = 128
	// streamDirFixedSize is the size of a directory record without its name.
	streamDirFixedSize = 1 + 4 + 8 + 8 + 8 + 8 + 1
	// streamsBlockSize is the size of a full block, CRC included.
	streamsBlockSize = StreamsBlockEntries*StreamEntrySize + 4

	// streamFlagUnordered marks a stream whose entries' last versions
	// decrease somewhere in the segment: lookups scan instead of bisecting.
	streamFlagUnordered byte = 1 << 0
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func streamsName(baseOffset uint64) string {
	return fmt.Sprintf("%0*d%s", nameDigits, baseOffset, StreamsSuffix)
}

// streamEntry says that the batch at relative offset rel holds at least one
// record of a stream, whose versions are in [first, last].
type streamEntry struct {
	rel   uint32 // batch base offset - segment base offset
	pos   uint32 // file position of the batch
	size  uint32 // batch size in bytes
	span  uint32 // the batch's last delta: it spans [rel, rel+span]
	first uint64 // smallest StreamVersion of the stream in the batch
	last  uint64 // largest
}

// endRel is the relative offset after the batch's span.
func (e streamEntry) endRel() uint64 { return uint64(e.rel) + uint64(e.span) + 1 }

// liveStream is one stream of the active segment, held in memory. Guarded
// like segment.live; entries are only ever appended to.
type liveStream struct {
	entries   []streamEntry
	maxVer    uint64
	unordered bool // some entry's last version is below the one before
}

func (ls *liveStream) add(e streamEntry) {
	if len(ls.entries) > 0 && e.last < ls.entries[len(ls.entries)-1].last {
		ls.unordered = true
	}
	ls.maxVer = max(ls.maxVer, e.last)
	ls.entries = append(ls.entries, e)
}

// batchStream is one stream of one batch, as collected by streamCollector.
type batchStream struct {
	name        []byte // aliases the batch
	first, last uint64
}

// collectorMapAt is the number of distinct streams in a batch past which
// streamCollector switches from a linear search to a map.
const collectorMapAt = 8

// streamCollector decodes a batch's records once and collects its distinct
// streams. It is reused, so that steady-state collection allocates nothing.
type streamCollector struct {
	list []batchStream
	idx  map[string]int // only for batches with many streams
}

// collect decodes every record of a verified batch and returns its streams,
// aliasing b, valid until the next call. Records with an empty stream or
// StreamVersion 0 are not indexed. A record that does not decode is an
// error wrapping record.ErrCorrupt.
func (c *streamCollector) collect(b record.Batch) ([]batchStream, error) {
	c.list = c.list[:0]
	useMap := false
	it := b.Records()
	var r record.Record
	for it.Next(&r) {
		if len(r.Stream) == 0 || r.StreamVersion == 0 {
			continue
		}
		i := -1
		if useMap {
			if j, ok := c.idx[string(r.Stream)]; ok {
				i = j
			}
		} else {
			for j := range c.list {
				if bytes.Equal(c.list[j].name, r.Stream) {
					i = j
					break
				}
			}
		}
		if i >= 0 {
			bs := &c.list[i]
			bs.first, bs.last = min(bs.first, r.StreamVersion), max(bs.last, r.StreamVersion)
			continue
		}
		c.list = append(c.list, batchStream{name: r.Stream, first: r.StreamVersion, last: r.StreamVersion})
		switch {
		case useMap:
			c.idx[string(r.Stream)] = len(c.list) - 1
		case len(c.list) > collectorMapAt:
			if c.idx == nil {
				c.idx = make(map[string]int)
			}
			clear(c.idx)
			for j := range c.list {
				c.idx[string(c.list[j].name)] = j
			}
			useMap = true
		}
	}
	return c.list, it.Err()
}

// addBatch records the streams of the batch at pos in set.
func addBatch(set map[string]*liveStream, segBase uint64, h record.Header, pos int64, streams []batchStream) {
	for _, bs := range streams {
		ls := set[string(bs.name)]
		if ls == nil {
			ls = &liveStream{}
			set[string(bs.name)] = ls
		}
		ls.add(streamEntry{
			rel: uint32(h.BaseOffset - segBase), pos: uint32(pos), size: uint32(h.Size()), span: h.LastDelta,
			first: bs.first, last: bs.last,
		})
	}
}

// streamDir is one stream's directory record: where its entries are in the
// .streams file and what they cover. Sealed segments keep only these in
// memory.
type streamDir struct {
	name        string // a substring of the directory section
	count       uint32 // entries, >= 1
	first       uint32 // index of its first entry in the entries section
	minVer      uint64
	maxVer      uint64
	firstOffset uint64 // base offset of its first batch
	endOffset   uint64 // offset after its last batch's span
	flags       byte
}

// streamsHeader is the fixed header of a .streams file.
type streamsHeader struct {
	base, next uint64
	logSize    uint64
	streams    uint32
	entries    uint32
	dirSize    uint32
	dirCRC     uint32
}

// entriesSize is the size of the entries section for n entries.
func entriesSize(n uint32) int64 {
	blocks := (int64(n) + StreamsBlockEntries - 1) / StreamsBlockEntries
	return int64(n)*StreamEntrySize + 4*blocks
}

// encodeStreams builds the .streams file of a segment. The output depends
// only on the segment's contents, so a rebuilt file equals the lost one.
func encodeStreams(base, next uint64, logSize int64, set map[string]*liveStream) []byte {
	names := make([]string, 0, len(set))
	var n uint32
	for name, ls := range set {
		names = append(names, name)
		n += uint32(len(ls.entries))
	}
	slices.Sort(names)
	var dir []byte
	for _, name := range names {
		ls := set[name]
		es := ls.entries
		minVer := es[0].first
		for _, e := range es {
			minVer = min(minVer, e.first)
		}
		var flags byte
		if ls.unordered {
			flags |= streamFlagUnordered
		}
		dir = append(dir, byte(len(name)))
		dir = append(dir, name...)
		dir = binary.BigEndian.AppendUint32(dir, uint32(len(es)))
		dir = binary.BigEndian.AppendUint64(dir, minVer)
		dir = binary.BigEndian.AppendUint64(dir, ls.maxVer)
		dir = binary.BigEndian.AppendUint64(dir, base+uint64(es[0].rel))
		dir = binary.BigEndian.AppendUint64(dir, base+es[len(es)-1].endRel())
		dir = append(dir, flags)
	}
	out := make([]byte, StreamsHeaderSize, StreamsHeaderSize+int64(len(dir))+entriesSize(n))
	copy(out, StreamsMagic)
	out[4] = StreamsVersion
	binary.BigEndian.PutUint64(out[8:], base)
	binary.BigEndian.PutUint64(out[16:], next)
	binary.BigEndian.PutUint64(out[24:], uint64(logSize))
	binary.BigEndian.PutUint32(out[32:], uint32(len(names)))
	binary.BigEndian.PutUint32(out[36:], n)
	binary.BigEndian.PutUint32(out[40:], uint32(len(dir)))
	binary.BigEndian.PutUint32(out[44:], crc32.Checksum(dir, castagnoli))
	binary.BigEndian.PutUint32(out[48:], crc32.Checksum(out[:48], castagnoli))
	out = append(out, dir...)
	blockStart, inBlock := len(out), 0
	for _, name := range names {
		for _, e := range set[name].entries {
			out = appendStreamEntry(out, e)
			if inBlock++; inBlock == StreamsBlockEntries {
				out = binary.BigEndian.AppendUint32(out, crc32.Checksum(out[blockStart:], castagnoli))
				blockStart, inBlock = len(out), 0
			}
		}
	}
	if inBlock > 0 {
		out = binary.BigEndian.AppendUint32(out, crc32.Checksum(out[blockStart:], castagnoli))
	}
	return out
}

func appendStreamEntry(b []byte, e streamEntry) []byte {
	b = binary.BigEndian.AppendUint32(b, e.rel)
	b = binary.BigEndian.AppendUint32(b, e.pos)
	b = binary.BigEndian.AppendUint32(b, e.size)
	b = binary.BigEndian.AppendUint32(b, e.span)
	b = binary.BigEndian.AppendUint64(b, e.first)
	return binary.BigEndian.AppendUint64(b, e.last)
}

func decodeStreamEntry(b []byte) streamEntry {
	return streamEntry{
		rel:   binary.BigEndian.Uint32(b[0:]),
		pos:   binary.BigEndian.Uint32(b[4:]),
		size:  binary.BigEndian.Uint32(b[8:]),
		span:  binary.BigEndian.Uint32(b[12:]),
		first: binary.BigEndian.Uint64(b[16:]),
		last:  binary.BigEndian.Uint64(b[24:]),
	}
}

// decodeStreamsHeader parses and checks a .streams header against the
// size of the file holding it.
func decodeStreamsHeader(b []byte, fileSize int64) (streamsHeader, error) {
	var h streamsHeader
	if len(b) < StreamsHeaderSize {
		return h, fmt.Errorf("%d bytes, shorter than the %d-byte header", len(b), StreamsHeaderSize)
	}
	if string(b[:4]) != StreamsMagic || b[4] != StreamsVersion || b[5] != 0 || b[6] != 0 || b[7] != 0 {
		return h, fmt.Errorf("bad magic or version % x", b[:8])
	}
	if got, want := crc32.Checksum(b[:48], castagnoli), binary.BigEndian.Uint32(b[48:]); got != want {
		return h, fmt.Errorf("header crc %08x, want %08x", got, want)
	}
	h = streamsHeader{
		base:    binary.BigEndian.Uint64(b[8:]),
		next:    binary.BigEndian.Uint64(b[16:]),
		logSize: binary.BigEndian.Uint64(b[24:]),
		streams: binary.BigEndian.Uint32(b[32:]),
		entries: binary.BigEndian.Uint32(b[36:]),
		dirSize: binary.BigEndian.Uint32(b[40:]),
		dirCRC:  binary.BigEndian.Uint32(b[44:]),
	}
	if want := StreamsHeaderSize + int64(h.dirSize) + entriesSize(h.entries); fileSize != want {
		return h, fmt.Errorf("file is %d bytes, header implies %d", fileSize, want)
	}
	if h.next < h.base {
		return h, fmt.Errorf("next offset %d before base offset %d", h.next, h.base)
	}
	return h, nil
}

// decodeStreamsDir parses and checks the directory section. Names become
// substrings of one string, so the directory costs one allocation for its
// bytes plus one record per stream.
func decodeStreamsDir(h streamsHeader, b []byte) ([]streamDir, error) {
	if got := crc32.Checksum(b, castagnoli); got != h.dirCRC {
		return nil, fmt.Errorf("directory crc %08x, want %08x", got, h.dirCRC)
	}
	if uint64(h.streams)*(streamDirFixedSize+1) > uint64(len(b)) {
		return nil, fmt.Errorf("%d streams cannot fit in a %d-byte directory", h.streams, len(b))
	}
	s := string(b)
	dirs := make([]streamDir, 0, h.streams)
	var entries uint64
	at := 0
	for i := range h.streams {
		if at >= len(s) {
			return nil, fmt.Errorf("directory ends before record %d", i)
		}
		n := int(s[at])
		if n == 0 || at+1+n+streamDirFixedSize-1 > len(s) {
			return nil, fmt.Errorf("directory record %d: name of %d bytes does not fit", i, n)
		}
		d := streamDir{name: s[at+1 : at+1+n], first: uint32(entries)}
		f := b[at+1+n:]
		d.count = binary.BigEndian.Uint32(f[0:])
		d.minVer = binary.BigEndian.Uint64(f[4:])
		d.maxVer = binary.BigEndian.Uint64(f[12:])
		d.firstOffset = binary.BigEndian.Uint64(f[20:])
		d.endOffset = binary.BigEndian.Uint64(f[28:])
		d.flags = f[36]
		at += 1 + n + streamDirFixedSize - 1
		switch {
		case i > 0 && d.name <= dirs[i-1].name:
			return nil, fmt.Errorf("directory record %d: stream %q not after %q", i, d.name, dirs[i-1].name)
		case d.count == 0:
			return nil, fmt.Errorf("directory record %d: no entries", i)
		case d.minVer == 0 || d.minVer > d.maxVer:
			return nil, fmt.Errorf("directory record %d: versions [%d, %d]", i, d.minVer, d.maxVer)
		case d.firstOffset < h.base || d.firstOffset >= d.endOffset || d.endOffset > h.next:
			return nil, fmt.Errorf("directory record %d: offsets [%d, %d) outside [%d, %d)", i, d.firstOffset, d.endOffset, h.base, h.next)
		case d.flags&^streamFlagUnordered != 0:
			return nil, fmt.Errorf("directory record %d: unknown flags %#x", i, d.flags)
		case uint64(d.count) > uint64(h.entries)-entries:
			return nil, fmt.Errorf("directory record %d: %d entries, only %d left", i, d.count, uint64(h.entries)-entries)
		}
		entries += uint64(d.count)
		dirs = append(dirs, d)
	}
	switch {
	case at != len(b):
		return nil, fmt.Errorf("%d trailing bytes in directory", len(b)-at)
	case entries != uint64(h.entries):
		return nil, fmt.Errorf("directory counts %d entries, header %d", entries, h.entries)
	}
	return dirs, nil
}

// lookupStream finds name in a sorted directory.
func lookupStream(dirs []streamDir, name string) (streamDir, bool) {
	i, ok := slices.BinarySearchFunc(dirs, name, func(d streamDir, name string) int { return strings.Compare(d.name, name) })
	if !ok {
		return streamDir{}, false
	}
	return dirs[i], true
}

// checkStreamEntries checks one stream's decoded entries against its
// directory record and the segment: offsets and positions strictly
// increase, batches lie inside the log and do not overlap, and versions
// agree with the directory.
func checkStreamEntries(h streamsHeader, d streamDir, es []streamEntry) error {
	var minVer, maxVer uint64
	unordered := false
	for i, e := range es {
		switch {
		case e.first == 0 || e.first > e.last:
			return fmt.Errorf("stream %q entry %d: versions [%d, %d]", d.name, i, e.first, e.last)
		case uint64(e.pos)+uint64(e.size) > h.logSize || e.size < record.HeaderSize:
			return fmt.Errorf("stream %q entry %d: batch of %d bytes at %d outside a %d-byte log", d.name, i, e.size, e.pos, h.logSize)
		case h.base+e.endRel() > h.next:
			return fmt.Errorf("stream %q entry %d: span ends at %d, after %d", d.name, i, h.base+e.endRel(), h.next)
		case i > 0 && (uint64(e.rel) < es[i-1].endRel() || uint64(e.pos) < uint64(es[i-1].pos)+uint64(es[i-1].size)):
			return fmt.Errorf("stream %q entry %d: overlaps entry %d", d.name, i, i-1)
		}
		if i > 0 && e.last < es[i-1].last {
			unordered = true
		}
		if i == 0 {
			minVer = e.first
		}
		minVer, maxVer = min(minVer, e.first), max(maxVer, e.last)
	}
	switch {
	case uint32(len(es)) != d.count:
		return fmt.Errorf("stream %q: %d entries, directory says %d", d.name, len(es), d.count)
	case minVer != d.minVer || maxVer != d.maxVer:
		return fmt.Errorf("stream %q: versions [%d, %d], directory says [%d, %d]", d.name, minVer, maxVer, d.minVer, d.maxVer)
	case h.base+uint64(es[0].rel) != d.firstOffset || h.base+es[len(es)-1].endRel() != d.endOffset:
		return fmt.Errorf("stream %q: offsets do not match the directory", d.name)
	case unordered != (d.flags&streamFlagUnordered != 0):
		return fmt.Errorf("stream %q: order flag is wrong", d.name)
	}
	return nil
}

// streamsFile is a whole decoded .streams file.
type streamsFile struct {
	header  streamsHeader
	dirs    []streamDir
	entries []streamEntry // all streams, in directory order
}

// decodeStreamsFile parses and fully checks a .streams file: header,
// directory, every block CRC and every entry. It is what Verify, Dump and
// the fuzzer use; readers of a live log use streamsReader instead.
func decodeStreamsFile(b []byte) (*streamsFile, error) {
	h, err := decodeStreamsHeader(b, int64(len(b)))
	if err != nil {
		return nil, err
	}
	dirEnd := StreamsHeaderSize + int(h.dirSize)
	dirs, err := decodeStreamsDir(h, b[StreamsHeaderSize:dirEnd])
	if err != nil {
		return nil, err
	}
	sf := &streamsFile{header: h, dirs: dirs, entries: make([]streamEntry, 0, h.entries)}
	for blk := int64(0); int64(len(sf.entries)) < int64(h.entries); blk++ {
		raw, err := streamsBlock(b[dirEnd:], h.entries, blk)
		if err != nil {
			return nil, err
		}
		for ; len(raw) > 0; raw = raw[StreamEntrySize:] {
			sf.entries = append(sf.entries, decodeStreamEntry(raw))
		}
	}
	for _, d := range dirs {
		if err := checkStreamEntries(h, d, sf.entries[d.first:d.first+d.count]); err != nil {
			return nil, err
		}
	}
	return sf, nil
}

// blockSpan returns the position of block blk within the entries section
// and the number of entries it holds.
func blockSpan(entries uint32, blk int64) (pos int64, n int) {
	return blk * streamsBlockSize, int(min(StreamsBlockEntries, int64(entries)-blk*StreamsBlockEntries))
}

// streamsBlock checks the CRC of block blk of an entries section held in
// memory and returns its entry bytes.
func streamsBlock(section []byte, entries uint32, blk int64) ([]byte, error) {
	pos, n := blockSpan(entries, blk)
	b := section[pos : pos+int64(n)*StreamEntrySize+4]
	return checkBlock(b, blk)
}

func checkBlock(b []byte, blk int64) ([]byte, error) {
	body := b[:len(b)-4]
	if got, want := crc32.Checksum(body, castagnoli), binary.BigEndian.Uint32(b[len(body):]); got != want {
		return nil, fmt.Errorf("entry block %d: crc %08x, want %08x", blk, got, want)
	}
	return body, nil
}
