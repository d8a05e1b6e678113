package segment

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"math"
	"path/filepath"

	"github.com/tsstore/tsstore/record"
)

// Index bundles (frozen, version 1): a sealed segment's three index
// files in one object, uploaded beside a tiered segment's .log so that a
// node that lost them fetches a few bytes instead of the whole object.
// The layout is drawn in doc.go.
const (
	// IndexBundleSuffix names a bundle kept as a file (the server's
	// object key of a segment's bundle is its object key with this for
	// LogSuffix); `tsstore dump` recognizes it.
	IndexBundleSuffix = ".idx"
	// IndexBundleMagic starts every index bundle.
	IndexBundleMagic = "TSIB"
	// IndexBundleVersion is the bundle format's version.
	IndexBundleVersion = 1
	// indexBundleHeader is the size of the header, its CRC included.
	indexBundleHeader = 36
	// indexBundleFrame is the size of a section's frame before its bytes.
	indexBundleFrame = 12
	// MaxIndexBundle bounds a bundle's size: a larger one is neither
	// built nor fetched nor decoded (the segment's index files are then
	// rebuilt from its object). Not part of the format.
	MaxIndexBundle = 256 << 20
)

// The kinds of a bundle's sections, in the order they appear.
const (
	bundleIndex     byte = 1 // <B>.index
	bundleTimeIndex byte = 2 // <B>.timeindex
	bundleStreams   byte = 3 // <B>.streams
)

// ErrIndexBundleTooLarge means a segment's index files add up to more
// than MaxIndexBundle: no bundle is built for it.
var ErrIndexBundleTooLarge = errors.New("segment: index files too large for an index bundle")

// RemoteIndexer is optionally implemented by an Options.Remote that
// also stores index bundles. IndexBundle returns the bundle stored for
// the tiered segment whose object is key (the Remote decides where it
// lives); a missing bundle is an error wrapping ErrRemoteLost. It must
// refuse, before reading it, a bundle of more than MaxIndexBundle bytes.
// Open calls it only for a tiered segment whose index files are missing
// or fail their checks, and checks what it returns.
type RemoteIndexer interface {
	IndexBundle(key string) ([]byte, error)
}

// IndexBundle is a decoded index bundle: a sealed segment's three index
// files, byte for byte, and the segment they describe.
type IndexBundle struct {
	BaseOffset uint64 // the segment's base offset
	NextOffset uint64 // NextOffset of its last batch
	LogSize    int64  // bytes of its .log (the object)
	Index      []byte // <B>.index
	TimeIndex  []byte // <B>.timeindex
	Streams    []byte // <B>.streams
}

// encodeIndexBundle lays out x as doc.go draws it.
func encodeIndexBundle(x *IndexBundle) []byte {
	sections := [3][]byte{x.Index, x.TimeIndex, x.Streams}
	n := indexBundleHeader
	for _, s := range sections {
		n += indexBundleFrame + len(s)
	}
	b := make([]byte, indexBundleHeader, n)
	copy(b[0:4], IndexBundleMagic)
	b[4] = IndexBundleVersion
	binary.BigEndian.PutUint64(b[8:16], x.BaseOffset)
	binary.BigEndian.PutUint64(b[16:24], x.NextOffset)
	binary.BigEndian.PutUint64(b[24:32], uint64(x.LogSize))
	binary.BigEndian.PutUint32(b[32:36], crc32.Checksum(b[:32], castagnoli))
	for i, s := range sections {
		at := len(b)
		b = append(b, byte(i)+bundleIndex, 0, 0, 0)
		b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
		b = append(b, 0, 0, 0, 0)
		b = append(b, s...)
		sum := crc32.Update(crc32.Checksum(b[at:at+8], castagnoli), castagnoli, s)
		binary.BigEndian.PutUint32(b[at+8:at+12], sum)
	}
	return b
}

// decodeIndexBundle parses a bundle's framing: header, three sections
// in order, each CRC, nothing after. It returns the position of a
// problem with the error. The sections alias b.
func decodeIndexBundle(b []byte) (*IndexBundle, int64, error) {
	switch {
	case len(b) > MaxIndexBundle:
		return nil, 0, fmt.Errorf("%d bytes, more than the %d a bundle may have", len(b), MaxIndexBundle)
	case len(b) < indexBundleHeader+3*indexBundleFrame:
		return nil, 0, fmt.Errorf("%d bytes, less than a bundle", len(b))
	case string(b[0:4]) != IndexBundleMagic:
		return nil, 0, fmt.Errorf("magic %q", b[0:4])
	case b[4] != IndexBundleVersion:
		return nil, 4, fmt.Errorf("version %d", b[4])
	case b[5] != 0 || b[6] != 0 || b[7] != 0:
		return nil, 5, fmt.Errorf("reserved bytes %x", b[5:8])
	case crc32.Checksum(b[:32], castagnoli) != binary.BigEndian.Uint32(b[32:36]):
		return nil, 0, errors.New("header checksum mismatch")
	}
	x := &IndexBundle{BaseOffset: binary.BigEndian.Uint64(b[8:16]), NextOffset: binary.BigEndian.Uint64(b[16:24]),
		LogSize: int64(binary.BigEndian.Uint64(b[24:32]))}
	if x.LogSize <= 0 || x.LogSize > MaxSegmentBytes+record.MaxBatchSize || x.NextOffset <= x.BaseOffset {
		return nil, 8, fmt.Errorf("segment [%d, %d) of %d bytes", x.BaseOffset, x.NextOffset, x.LogSize)
	}
	at := indexBundleHeader
	for i, dst := range []*[]byte{&x.Index, &x.TimeIndex, &x.Streams} {
		if len(b)-at < indexBundleFrame {
			return nil, int64(at), fmt.Errorf("bundle ends inside section %d's frame", i+1)
		}
		f := b[at : at+indexBundleFrame]
		n := int64(binary.BigEndian.Uint32(f[4:8]))
		switch {
		case f[0] != byte(i)+bundleIndex:
			return nil, int64(at), fmt.Errorf("section %d is of kind %d, want %d", i+1, f[0], byte(i)+bundleIndex)
		case f[1] != 0 || f[2] != 0 || f[3] != 0:
			return nil, int64(at + 1), fmt.Errorf("section %d: reserved bytes %x", i+1, f[1:4])
		case n > int64(len(b)-at-indexBundleFrame):
			return nil, int64(at + 4), fmt.Errorf("section %d of %d bytes, %d left in the bundle", i+1, n, len(b)-at-indexBundleFrame)
		}
		body := b[at+indexBundleFrame : at+indexBundleFrame+int(n)]
		if sum := crc32.Update(crc32.Checksum(f[:8], castagnoli), castagnoli, body); sum != binary.BigEndian.Uint32(f[8:12]) {
			return nil, int64(at), fmt.Errorf("section %d: checksum mismatch", i+1)
		}
		*dst = body
		at += indexBundleFrame + int(n)
	}
	if at != len(b) {
		return nil, int64(at), fmt.Errorf("%d bytes after the last section", len(b)-at)
	}
	return x, 0, nil
}

// checkContents checks the three files as Open would (every entry, as
// they are in memory) against the segment: the same base, end and size,
// index entries inside the log and before its end, the .streams file
// whole.
func (x *IndexBundle) checkContents() error {
	entries, err := decodeIndex(x.Index, x.TimeIndex, x.LogSize)
	if err != nil {
		return err
	}
	if last := entries[len(entries)-1]; x.BaseOffset+uint64(last.rel) >= x.NextOffset {
		return fmt.Errorf("last index entry at offset %d, the segment ends at %d", x.BaseOffset+uint64(last.rel), x.NextOffset)
	}
	sf, err := decodeStreamsFile(x.Streams)
	if err != nil {
		return fmt.Errorf("streams: %v", err)
	}
	if h := sf.header; h.base != x.BaseOffset || h.next != x.NextOffset || int64(h.logSize) != x.LogSize {
		return fmt.Errorf("streams describe [%d, %d) of %d bytes", h.base, h.next, h.logSize)
	}
	return nil
}

// DecodeIndexBundle decodes the bundle b of the sealed segment [base,
// next) whose .log is logSize bytes, and checks it whole: its framing
// and CRCs, that it describes that segment, and the three files as Open
// checks them (every entry of the sparse indexes, the whole .streams
// file). Anything else is a *CorruptionError naming name (the bundle's
// object key, or a file).
func DecodeIndexBundle(b []byte, name string, base, next uint64, logSize int64) (*IndexBundle, error) {
	x, pos, err := decodeIndexBundle(b)
	if err == nil {
		if x.BaseOffset != base || x.NextOffset != next || x.LogSize != logSize {
			err = fmt.Errorf("the bundle of [%d, %d) of %d bytes, not of this segment [%d, %d) of %d bytes",
				x.BaseOffset, x.NextOffset, x.LogSize, base, next, logSize)
		} else {
			err = x.checkContents()
		}
	}
	if err != nil {
		return nil, &CorruptionError{Path: name, Position: pos, Offset: base, Reason: "index bundle: " + err.Error()}
	}
	return x, nil
}

// IndexBundle builds the index bundle of the sealed segment at base,
// local or tiered, from its local index files, and checks it as a node
// that fetches it will (DecodeIndexBundle). When the segment's .log is
// local it also checks the files against it, as VerifySegment does (a
// read of the whole .log that decodes every record). Index files that
// fail those checks are a *CorruptionError naming one of them (reopen to
// rebuild them); bytes of the .log that fail are a *CorruptionError
// naming the .log; files adding up to more than MaxIndexBundle are
// ErrIndexBundleTooLarge.
func (l *Log) IndexBundle(base uint64) ([]byte, error) {
	s, err := l.sealedReadable(base)
	if err != nil {
		return nil, err
	}
	defer s.release()
	if s.ix == nil || s.streams == nil {
		return nil, fmt.Errorf("segment: %d has no index files", base)
	}
	x := &IndexBundle{BaseOffset: base, NextOffset: s.next, LogSize: s.size}
	if s.ix.n*(IndexEntrySize+TimeIndexEntrySize) > MaxIndexBundle {
		return nil, fmt.Errorf("%w: segment %d has %d index entries", ErrIndexBundleTooLarge, base, s.ix.n)
	}
	x.Index = make([]byte, s.ix.n*IndexEntrySize)
	if err := readFull(s.ix.f, s.ix.path, x.Index, 0, base); err != nil {
		return nil, l.errClosedRead(err)
	}
	x.TimeIndex, err = readWhole(l.fs, s.ix.tpath, MaxIndexBundle)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, corruptf(s.ix.tpath, 0, base, "missing")
	case err != nil:
		return nil, fmt.Errorf("segment: read %s: %w", s.ix.tpath, err)
	}
	if fi, err := s.streams.f.Stat(); err != nil {
		return nil, fmt.Errorf("segment: stat %s: %w", s.streams.path, err)
	} else if fi.Size()+int64(len(x.Index)+len(x.TimeIndex))+indexBundleHeader+3*indexBundleFrame > MaxIndexBundle {
		return nil, fmt.Errorf("%w: segment %d's .streams has %d bytes", ErrIndexBundleTooLarge, base, fi.Size())
	}
	if x.Streams, err = s.streams.readAll(); err != nil {
		return nil, l.errClosedRead(err)
	}
	if err := x.checkContents(); err != nil {
		return nil, corruptf(filepath.Join(l.dir, indexName(base)), 0, base, "index files of segment %d: %v", base, err)
	}
	if s.remote == nil {
		// The .log is here: check the files against it, as VerifySegment
		// does, so that a bundle never spreads index files that do not
		// describe the bytes (a node that fetched them would find that
		// only at a lookup, and fetch the same files again).
		entries, err := decodeIndex(x.Index, x.TimeIndex, s.size)
		if err != nil {
			return nil, corruptf(s.ix.path, 0, base, "%v", err)
		}
		c := segment{base: s.base, path: s.path, f: s.f, size: s.size, next: s.next, ix: s.ix, streams: s.streams,
			digest: s.digest, digestKnown: s.digestKnown, index: entries}
		lastTS := int64(math.MinInt64)
		if err := verifySegment(&c, &lastTS, func(int64) {}); err != nil {
			return nil, l.errClosedRead(err)
		}
	}
	return encodeIndexBundle(x), nil
}

// fetchIndexes takes the index files of the tiered segment s (marker m)
// from the store's bundle: fetched, checked (DecodeIndexBundle), each
// file written as tmp, fsync, rename, then the directory fsynced, and
// opened with Open's checks. On any error s is unchanged; files it wrote
// are left for the rebuild to replace.
func (l *Log) fetchIndexes(s *segment, m *marker) error {
	ri, ok := l.opts.Remote.(RemoteIndexer)
	if !ok {
		return errors.New("the Remote stores no index bundles")
	}
	b, err := ri.IndexBundle(m.key)
	if err != nil {
		return err
	}
	x, err := DecodeIndexBundle(b, m.key, s.base, s.next, s.size)
	if err != nil {
		return err
	}
	if base := s.base + uint64(binary.BigEndian.Uint32(x.Index[len(x.Index)-IndexEntrySize:])); base > m.last.BaseOffset {
		return fmt.Errorf("last index entry at offset %d, after the last batch at %d", base, m.last.BaseOffset)
	}
	spath := filepath.Join(l.dir, streamsName(s.base))
	for _, f := range []struct {
		path string
		data []byte
	}{{filepath.Join(l.dir, indexName(s.base)), x.Index}, {filepath.Join(l.dir, timeIndexName(s.base)), x.TimeIndex}, {spath, x.Streams}} {
		if err := writeFileAtomic(l.fs, f.path, f.data); err != nil {
			return fmt.Errorf("segment: write %s: %w", f.path, err)
		}
	}
	if err := l.fs.SyncDir(l.dir); err != nil {
		return fmt.Errorf("segment: fsync %s: %w", l.dir, err)
	}
	ix, _, _, err := openIndex(l.fs, l.dir, s.base, s.size)
	if err != nil {
		return fmt.Errorf("segment: open fetched index of %d: %w", s.base, err)
	}
	sx, err := openStreams(l.fs, spath, s.base, s.size)
	if err != nil {
		ix.f.Close()
		return fmt.Errorf("segment: open fetched %s: %w", spath, err)
	}
	s.ix, s.streams = ix, sx
	return nil
}

// DumpIndexBundle writes the structure of an index bundle file (an
// object copied out of the tier target) to w: the segment it names, each
// section's size, and whether the files check out as a node that
// fetched it would check them. A bundle that fails is an error wrapping
// ErrCorrupt, after what could be printed was.
func DumpIndexBundle(path string, w io.Writer) error {
	data, err := readWhole(OSFS{}, path, MaxIndexBundle)
	if err != nil {
		return err
	}
	p := &printer{w: w}
	x, pos, err := decodeIndexBundle(data)
	if err != nil {
		p.printf("file %s: %d bytes: not a good index bundle: at position %d: %v\n", filepath.Base(path), len(data), pos, err)
		return corruptf(path, pos, 0, "index bundle: %v", err)
	}
	p.printf("file %s: %d bytes, index bundle of segment [%d, %d), %d bytes of .log\n", filepath.Base(path), len(data), x.BaseOffset, x.NextOffset, x.LogSize)
	p.printf("section 1 %s: %d bytes, %d entries\n", IndexSuffix, len(x.Index), len(x.Index)/IndexEntrySize)
	p.printf("section 2 %s: %d bytes, %d entries\n", TimeIndexSuffix, len(x.TimeIndex), len(x.TimeIndex)/TimeIndexEntrySize)
	p.printf("section 3 %s: %d bytes\n", StreamsSuffix, len(x.Streams))
	if err := x.checkContents(); err != nil {
		p.printf("contents: BAD: %v\n", err)
		if p.err != nil {
			return p.err
		}
		return corruptf(path, 0, x.BaseOffset, "index bundle: %v", err)
	}
	p.printf("contents: ok\n")
	return p.err
}
