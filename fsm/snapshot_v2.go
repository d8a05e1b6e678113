package fsm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/tsstore/tsstore/segment"
	"github.com/vmihailenco/msgpack/v5"
)

// Snapshot stream versions (frozen): the header's Version field.
const (
	// snapshotV1 streams carry every segment's bytes.
	snapshotV1 = 1
	// snapshotV2 streams reference tiered segments by object key and
	// carry their local files (marker and index files) instead of their
	// bytes. A stream with no tiered segment is written as v1.
	snapshotV2 = 2
	// maxTieredPart bounds one local file of a tiered segment in a v2
	// stream (an index of a 1 GiB segment is a few MiB).
	maxTieredPart = 256 << 20
)

// tieredRef is the fourth element of a v2 segment reference: the
// segment's bytes are the object Key (Size bytes in segmentRef, CRC-32C
// Checksum), and its part of the stream is its local files, Files[i]
// bytes each, in segment.TieredPaths order (marker, .index, .timeindex,
// .streams). Frozen: msgpack array (Key, Checksum, Files).
type tieredRef struct {
	_msgpack struct{} `msgpack:",as_array"`
	Key      string
	Checksum uint32
	Files    [4]int64
}

// segmentRefV1 is a segment reference as v1 encodes it; segmentRef's
// encoder uses it for local segments, so their bytes never change.
type segmentRefV1 struct {
	_msgpack   struct{} `msgpack:",as_array"`
	BaseOffset uint64
	NextOffset uint64
	Size       int64
}

// EncodeMsgpack writes the 3-element v1 form, or 4 elements with Tiered.
func (s segmentRef) EncodeMsgpack(e *msgpack.Encoder) error {
	if s.Tiered == nil {
		return e.Encode(segmentRefV1{BaseOffset: s.BaseOffset, NextOffset: s.NextOffset, Size: s.Size})
	}
	if err := e.EncodeArrayLen(4); err != nil {
		return err
	}
	for _, v := range []any{s.BaseOffset, s.NextOffset, s.Size, s.Tiered} {
		if err := e.Encode(v); err != nil {
			return err
		}
	}
	return nil
}

// DecodeMsgpack reads the 3- or 4-element form.
func (s *segmentRef) DecodeMsgpack(d *msgpack.Decoder) error {
	n, err := arrayLen(d, "segment reference", 3, 4)
	if err != nil {
		return err
	}
	for _, v := range []any{&s.BaseOffset, &s.NextOffset, &s.Size} {
		if err := d.Decode(v); err != nil {
			return err
		}
	}
	s.Tiered = nil
	if n == 4 {
		s.Tiered = &tieredRef{}
		return d.Decode(s.Tiered)
	}
	return nil
}

// bodySize is how many bytes of the stream the segment's part takes.
func (s segmentRef) bodySize() int64 {
	if s.Tiered == nil {
		return s.Size
	}
	var n int64
	for _, f := range s.Tiered.Files {
		n += f
	}
	return n
}

// remoteRef is the object a tiered reference names.
func (s segmentRef) remoteRef() segment.RemoteRef {
	return segment.RemoteRef{Key: s.Tiered.Key, Size: s.Size, Checksum: s.Tiered.Checksum}
}

// checkSegmentRefs checks the references of a header of version v.
func checkSegmentRefs(v int, segs []segmentRef) error {
	for i, s := range segs {
		if s.Size <= 0 || (i > 0 && s.BaseOffset != segs[i-1].NextOffset) {
			return fmt.Errorf("%w: segment %d (base %d, size %d) out of order", ErrBadSnapshot, i, s.BaseOffset, s.Size)
		}
		if s.Tiered == nil {
			continue
		}
		if v < snapshotV2 {
			return fmt.Errorf("%w: version %d stream references tiered segment %d", ErrBadSnapshot, v, s.BaseOffset)
		}
		t := s.Tiered
		if t.Key == "" || len(t.Key) > segment.MaxTieredKey {
			return fmt.Errorf("%w: tiered segment %d: object key of %d bytes", ErrBadSnapshot, s.BaseOffset, len(t.Key))
		}
		for j, f := range t.Files {
			if f <= 0 || f > maxTieredPart {
				return fmt.Errorf("%w: tiered segment %d: local file %d of %d bytes", ErrBadSnapshot, s.BaseOffset, j, f)
			}
		}
	}
	return nil
}

// resolveTiered makes segment i of a snapshot being persisted a tiered
// reference when its bytes are (or since the capture have become) an
// object: it records the key, checksum and the sizes of the local files
// that the stream carries instead of the bytes. It returns their paths.
func (s *Snapshot) resolveTiered(i int, ref *segmentRef) ([4]string, error) {
	var none [4]string
	key, sum, path := s.keys[i], s.digests[i], s.paths[i]
	if key == "" {
		if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
			return none, nil // local
		}
		// Evicted to the tier target since the capture: the log knows
		// its object now.
		si, err := s.p.tieredInfo(ref.BaseOffset)
		if err != nil {
			return none, err
		}
		key, sum, path = si.Key, si.Digest, si.Path
		s.keys[i], s.paths[i] = key, path
	}
	paths := segment.TieredPaths(filepath.Dir(path), ref.BaseOffset)
	t := &tieredRef{Key: key, Checksum: sum}
	for j, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			return none, fmt.Errorf("fsm: tiered segment %d: %w", ref.BaseOffset, err)
		}
		t.Files[j] = fi.Size()
	}
	ref.Tiered = t
	return paths, nil
}

// writeHeader writes the stream prefix and header h.
func writeHeader(w io.Writer, h *snapshotHeader) (int64, error) {
	hdr, err := msgpack.Marshal(h)
	if err != nil {
		return 0, err
	}
	var prefix [snapshotPrefixSize]byte
	copy(prefix[:8], snapshotMagic)
	binary.BigEndian.PutUint32(prefix[8:12], uint32(len(hdr)))
	binary.BigEndian.PutUint32(prefix[12:16], crc32.Checksum(hdr, castagnoli))
	if _, err := w.Write(prefix[:]); err != nil {
		return 0, err
	}
	if _, err := w.Write(hdr); err != nil {
		return 0, err
	}
	return int64(len(prefix) + len(hdr)), nil
}

// readTieredParts reads a tiered segment's local files from a stream.
func readTieredParts(r io.Reader, s segmentRef) ([4][]byte, error) {
	var files [4][]byte
	for j, n := range s.Tiered.Files {
		files[j] = make([]byte, n)
		if _, err := io.ReadFull(r, files[j]); err != nil {
			return files, fmt.Errorf("%w: tiered segment %d: reading local file %d: %v", ErrBadSnapshot, s.BaseOffset, j, err)
		}
	}
	return files, nil
}

// TieredSegment is a segment a v2 snapshot stream references by object.
type TieredSegment struct {
	BaseOffset, NextOffset uint64
	Key                    string
	Size                   int64
	Checksum               uint32
}

func tieredSegments(segs []segmentRef) []TieredSegment {
	var out []TieredSegment
	for _, s := range segs {
		if s.Tiered != nil {
			out = append(out, TieredSegment{BaseOffset: s.BaseOffset, NextOffset: s.NextOffset, Key: s.Tiered.Key, Size: s.Size, Checksum: s.Tiered.Checksum})
		}
	}
	return out
}

// InlineTiered turns the snapshot stream r into one that carries every
// segment's bytes: a v2 stream's tiered segments are read from their
// objects through remote, and the result is a v1 stream (what a
// self-contained backup holds). A v1 stream passes unchanged. It reads
// r's header and returns the new stream's size and the stream; the
// objects are read as the stream is. The bytes are not checked here:
// read the result through VerifySnapshotStream.
func InlineTiered(r io.Reader, remote segment.Remote) (int64, io.Reader, error) {
	var seen bytes.Buffer
	h, err := readSnapshotHeader(io.TeeReader(r, &seen))
	if err != nil {
		return 0, nil, err
	}
	if h.Version == snapshotV1 {
		size := int64(seen.Len())
		for _, s := range h.Segments {
			size += s.Size
		}
		return size, io.MultiReader(&seen, r), nil
	}
	out := *h
	out.Version = snapshotV1
	out.Segments = make([]segmentRef, len(h.Segments))
	var readers []io.Reader
	var size int64
	for i, s := range h.Segments {
		out.Segments[i] = segmentRef{BaseOffset: s.BaseOffset, NextOffset: s.NextOffset, Size: s.Size}
		size += s.Size
		if s.Tiered == nil {
			readers = append(readers, io.LimitReader(r, s.Size))
			continue
		}
		if remote == nil {
			return 0, nil, fmt.Errorf("fsm: segment %d is the tiered object %q and no tier target is configured", s.BaseOffset, s.Tiered.Key)
		}
		readers = append(readers, &objectPart{r: r, skip: s.bodySize(), remote: remote, ref: s.remoteRef()})
	}
	var hdr bytes.Buffer
	n, err := writeHeader(&hdr, &out)
	if err != nil {
		return 0, nil, err
	}
	return n + size, io.MultiReader(append([]io.Reader{&hdr}, readers...)...), nil
}

// objectPart skips a tiered segment's local files in the v2 stream r and
// yields its object's bytes instead.
type objectPart struct {
	r      io.Reader
	skip   int64
	remote segment.Remote
	ref    segment.RemoteRef
	sec    *io.SectionReader
	obj    segment.RemoteObject
}

func (o *objectPart) Read(p []byte) (int, error) {
	if o.sec == nil {
		if n, err := io.CopyN(io.Discard, o.r, o.skip); err != nil {
			return 0, fmt.Errorf("%w: stream ends after %d of %d bytes of tiered segment files: %v", ErrBadSnapshot, n, o.skip, err)
		}
		obj, err := o.remote.Open(o.ref.Key, o.ref.Size)
		if err != nil {
			return 0, err
		}
		o.obj, o.sec = obj, io.NewSectionReader(obj, 0, o.ref.Size)
	}
	n, err := o.sec.Read(p)
	if err != nil && o.obj != nil {
		o.obj.Close()
		o.obj = nil
	}
	return n, err
}
