package fsm

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/tsstore/tsstore/internal/atomicfile"
	"github.com/tsstore/tsstore/segment"
	"github.com/vmihailenco/msgpack/v5"
)

// Snapshot stream layout (frozen, versions 1 and 2). This is what Persist
// writes, what InstallSnapshot ships to a follower and what Restore reads:
//
//	offset size  field
//	0      8     magic "TSSNAP01" (both versions)
//	8      4     header length H, big-endian
//	12     4     CRC-32C of the header bytes, big-endian
//	16     H     header: msgpack of snapshotHeader, an array
//	             (Version, Index, State, Segments)
//	16+H   ...   each segment's part, in header.Segments order
//
// A segment reference is a msgpack array. Version 1 (and a local segment
// in version 2) has 3 elements, and its part is the segment's bytes, Size
// bytes (a plain copy of the .log file's prefix):
//
//	[BaseOffset uint64, NextOffset uint64, Size int64]
//
// Version 2 adds tiered segments (cold tiering, issue #13), whose bytes
// are an object in the tier target. Their reference has a 4th element,
// and their part is their local files, not their bytes:
//
//	[BaseOffset, NextOffset, Size, [Key string, Checksum uint32,
//	 [M, X, T, S int64]]]
//
//	part   size  content
//	0      M     the <B>.tiered marker, as package segment draws it (key,
//	             size, checksum, next offset, timestamps, last batch
//	             header; its own CRC)
//	M      X     <B>.index
//	M+X    T     <B>.timeindex
//	M+X+T  S     <B>.streams
//
// Size is the object's size and Checksum its CRC-32C (the segment
// digest); each file is 1..maxTieredPart bytes. Persist writes version 1
// when no segment is tiered (the stream is then byte-identical to what it
// was before version 2), else version 2. Readers take both; a version 1
// header with a 4-element reference is refused.
//
// Local segments' index files are not shipped: Restore rebuilds them,
// which also verifies every batch CRC of the received segments. A tiered
// segment's files are checked without the object (segment.InstallTiered:
// the marker's CRC, that it names the reference, the index files against
// it); its bytes were checked against the cluster's digest when the
// object was committed, and every read checks batch CRCs.
const (
	snapshotMagic      = "TSSNAP01"
	snapshotPrefixSize = 16
	maxSnapshotHeader  = 1 << 30
)

type segmentRef struct {
	_msgpack   struct{} `msgpack:",as_array"`
	BaseOffset uint64
	NextOffset uint64
	Size       int64
	// Tiered is set for a tiered segment (version 2 only).
	Tiered *tieredRef
}

type snapshotHeader struct {
	_msgpack struct{} `msgpack:",as_array"`
	Version  int
	Index    uint64
	State    *State
	Segments []segmentRef
}

// Linker is implemented by snapshot sinks that can take a segment file by
// reference (a hard link) instead of by copy. Sealed segments never change
// and the active one only grows, so a link plus a size is a stable copy.
type Linker interface {
	Link(path string, size int64) error
}

// RemoteLinker is implemented by snapshot sinks that can take a tiered
// segment (one whose .log was evicted to the tier target) by its object
// key instead of by its bytes. Objects are written once, so a key plus a
// size is a stable copy too.
type RemoteLinker interface {
	LinkRemote(key string, size int64) error
}

// Snapshot is a captured, immutable view of the FSM: a manifest of segment
// files with sizes, and a copy of the state tables.
type Snapshot struct {
	p       *Processor
	header  snapshotHeader
	paths   []string
	keys    []string // the object key of a tiered segment, else ""
	digests []uint32 // a tiered segment's checksum
	// done releases the pin that keeps dropped segments' files (which
	// paths may name) on disk; Persist and Release call it, once.
	done sync.Once
}

// Snapshot captures the FSM at the last applied index. It makes the log
// durable first: Raft may drop its own log up to this index once the
// snapshot is persisted, and from then on the segments are the only copy.
// It copies no event data.
func (p *Processor) Snapshot() (*Snapshot, error) {
	if err := p.Failed(); err != nil {
		return nil, err
	}
	if err := p.log.Sync(); err != nil {
		p.fail(err)
		return nil, p.Failed()
	}
	if d := p.log.Damaged(); len(d) > 0 {
		// Fail fast rather than link bad bytes into a snapshot that
		// followers would download and refuse; the node repairs the
		// segment from a peer, and the next snapshot goes through.
		return nil, fmt.Errorf("%w: %d damaged, the first: %w", ErrSegmentDamaged, len(d), d[0].Err)
	}
	p.mu.RLock()
	st := p.mu.state.clone()
	p.mu.RUnlock()
	// Pinned, the files listed below stay until Persist has linked them,
	// even if a cut applied meanwhile drops their segments.
	p.pin()
	s := &Snapshot{p: p, header: snapshotHeader{Version: snapshotV1, Index: p.applied.Load(), State: st}}
	for _, seg := range p.log.Segments() {
		if seg.Size == 0 || seg.NextOffset <= st.Retention.FirstOffset {
			// Empty, or below a committed cut and about to be dropped.
			continue
		}
		s.header.Segments = append(s.header.Segments, segmentRef{BaseOffset: seg.BaseOffset, NextOffset: seg.NextOffset, Size: seg.Size})
		s.paths = append(s.paths, seg.Path)
		s.keys = append(s.keys, seg.Key)
		s.digests = append(s.digests, seg.Digest)
	}
	return s, nil
}

// Index is the Raft index the snapshot was taken at.
func (s *Snapshot) Index() uint64 { return s.header.Index }

// Persist writes the snapshot stream to w and records the state as the
// local checkpoint. If w is a Linker, segment files are linked, not copied.
// Tiered segments are referenced by key with their local files (a
// version 2 stream); with none, the stream is version 1.
func (s *Snapshot) Persist(w io.Writer) error {
	defer s.Release()
	if err := s.p.writeCheckpoint(checkpoint{Index: s.header.Index, State: s.header.State}, false); err != nil {
		return fmt.Errorf("fsm: writing checkpoint: %w", err)
	}
	h := s.header
	h.Segments = append([]segmentRef(nil), s.header.Segments...)
	tiered := make([][4]string, len(h.Segments))
	for i := range h.Segments {
		var err error
		if tiered[i], err = s.resolveTiered(i, &h.Segments[i]); err != nil {
			return err
		}
		if h.Segments[i].Tiered != nil {
			h.Version = snapshotV2
		}
	}
	if _, err := writeHeader(w, &h); err != nil {
		return err
	}
	for i, ref := range h.Segments {
		if ref.Tiered != nil {
			if err := s.persistFiles(w, tiered[i], ref.Tiered.Files); err != nil {
				return err
			}
			continue
		}
		err := s.persistSegment(w, s.paths[i], ref.BaseOffset, ref.Size)
		if errors.Is(err, os.ErrNotExist) {
			// Evicted to the tier target since the header was written:
			// the part is the object's bytes.
			err = s.persistEvicted(w, ref)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// persistSegment writes one local segment's part: linked or copied from
// its file.
func (s *Snapshot) persistSegment(w io.Writer, path string, base uint64, size int64) error {
	if linker, ok := w.(Linker); ok {
		return linker.Link(path, size)
	}
	return copyPrefix(w, path, size)
}

// persistEvicted writes the part of a segment the header lists as local
// whose .log was evicted since: a sink that can takes the object by key
// (read when the snapshot is opened), else its bytes are copied from it.
func (s *Snapshot) persistEvicted(w io.Writer, ref segmentRef) error {
	si, err := s.p.tieredInfo(ref.BaseOffset)
	if err != nil {
		return err
	}
	if remote, ok := w.(RemoteLinker); ok {
		return remote.LinkRemote(si.Key, ref.Size)
	}
	return s.p.copyTiered(w, ref.BaseOffset, ref.Size)
}

// persistFiles writes a tiered segment's part: its local files, linked
// or copied. They never change once the segment is tiered.
func (s *Snapshot) persistFiles(w io.Writer, paths [4]string, sizes [4]int64) error {
	for j, path := range paths {
		if err := s.persistSegment(w, path, 0, sizes[j]); err != nil {
			return err
		}
	}
	return nil
}

// tieredInfo returns the tiered segment at base.
func (p *Processor) tieredInfo(base uint64) (segment.SegmentInfo, error) {
	var info segment.SegmentInfo
	err := p.WithLog(func(l *segment.Log) error {
		for _, si := range l.Segments() {
			if si.BaseOffset == base && si.Tiered {
				info = si
				return nil
			}
		}
		return fmt.Errorf("fsm: segment %d has no local .log and is not tiered", base)
	})
	return info, err
}

// copyTiered copies the size bytes of the tiered segment at base, read
// from its object through the log.
func (p *Processor) copyTiered(w io.Writer, base uint64, size int64) error {
	var rd *segment.SealedReader
	if err := p.WithLog(func(l *segment.Log) error {
		var err error
		rd, err = l.OpenSealed(base)
		return err
	}); err != nil {
		return err
	}
	defer rd.Close()
	n, err := io.Copy(w, io.NewSectionReader(rd, 0, size))
	if err == nil && n != size {
		err = fmt.Errorf("fsm: tiered segment %d: copied %d of %d bytes", base, n, size)
	}
	return err
}

// Release lets the files the snapshot names be dropped by retention.
// Persist calls it when done; call it for a snapshot never persisted.
func (s *Snapshot) Release() { s.done.Do(s.p.unpin) }

func copyPrefix(w io.Writer, path string, size int64) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	n, err := io.Copy(w, io.NewSectionReader(f, 0, size))
	if err == nil && n != size {
		err = fmt.Errorf("fsm: %s: copied %d of %d bytes", path, n, size)
	}
	return err
}

// readSnapshotHeader reads and checks the prefix and header of a stream.
func readSnapshotHeader(r io.Reader) (*snapshotHeader, error) {
	var prefix [snapshotPrefixSize]byte
	if _, err := io.ReadFull(r, prefix[:]); err != nil {
		return nil, fmt.Errorf("%w: reading prefix: %v", ErrBadSnapshot, err)
	}
	if string(prefix[:8]) != snapshotMagic {
		return nil, fmt.Errorf("%w: magic %q", ErrBadSnapshot, prefix[:8])
	}
	n := binary.BigEndian.Uint32(prefix[8:12])
	if n > maxSnapshotHeader {
		return nil, fmt.Errorf("%w: header of %d bytes", ErrBadSnapshot, n)
	}
	hdr := make([]byte, n)
	if _, err := io.ReadFull(r, hdr); err != nil {
		return nil, fmt.Errorf("%w: reading header: %v", ErrBadSnapshot, err)
	}
	if crc32.Checksum(hdr, castagnoli) != binary.BigEndian.Uint32(prefix[12:16]) {
		return nil, fmt.Errorf("%w: header checksum mismatch", ErrBadSnapshot)
	}
	var h snapshotHeader
	if err := msgpack.Unmarshal(hdr, &h); err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrBadSnapshot, err)
	}
	if (h.Version != snapshotV1 && h.Version != snapshotV2) || h.State == nil {
		return nil, fmt.Errorf("%w: version %d", ErrBadSnapshot, h.Version)
	}
	if err := checkSegmentRefs(h.Version, h.Segments); err != nil {
		return nil, err
	}
	return &h, nil
}

// Restore replaces the whole FSM with the snapshot read from r: it writes
// the segments into a fresh directory, verifies them by opening the log
// there (which rebuilds and checks every index and CRC), and only then
// swaps it in. A failed restore leaves the old log untouched.
func (p *Processor) Restore(r io.Reader) error {
	br := bufio.NewReaderSize(r, 1<<20)
	h, err := readSnapshotHeader(br)
	if err != nil {
		return err
	}
	tmp := filepath.Join(p.cfg.Dir, "log.restore")
	if err := os.RemoveAll(tmp); err != nil {
		return err
	}
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return err
	}
	for _, s := range h.Segments {
		if err := restoreSegment(tmp, br, s); err != nil {
			os.RemoveAll(tmp)
			return err
		}
	}
	if len(h.Segments) == 0 && h.State.NextOffset > 0 {
		// Retention dropped every sealed segment and the active one is
		// empty: the log resumes, empty, at the next offset.
		if err := writeSegment(filepath.Join(tmp, segment.FileName(h.State.NextOffset)), br, 0); err != nil {
			os.RemoveAll(tmp)
			return err
		}
	}
	if err := atomicfile.SyncDir(tmp); err != nil {
		return err
	}
	st := h.State
	st.fillMaps()
	check, err := segment.Open(tmp, p.strictSegment())
	if err != nil {
		os.RemoveAll(tmp)
		return fmt.Errorf("%w: %v", ErrBadSnapshot, err)
	}
	if check.NextOffset() != st.NextOffset {
		check.Close()
		os.RemoveAll(tmp)
		return fmt.Errorf("%w: segments end at offset %d, header says %d", ErrBadSnapshot, check.NextOffset(), st.NextOffset)
	}
	if err := check.Close(); err != nil {
		return err
	}
	// Nothing of the old log's cuts may be dropped from the new one; the
	// new one's files below its first kept offset were never shipped.
	p.resetDrops(0)
	p.setThins(nil)
	err = p.swapIn(tmp, h)
	p.resetDrops(h.State.Retention.FirstOffset)
	// The snapshot's files may predate rewrites its state committed.
	rs := h.State.Retention.clone()
	p.setThins(&rs)
	p.wakeCuts()
	return err
}

// restoreSegment writes one segment's part of a stream into dir: a local
// segment's bytes, or a tiered segment's marker and index files, checked
// without reading its object.
func restoreSegment(dir string, r io.Reader, s segmentRef) error {
	if s.Tiered == nil {
		return writeSegment(filepath.Join(dir, segment.FileName(s.BaseOffset)), r, s.Size)
	}
	files, err := readTieredParts(r, s)
	if err != nil {
		return err
	}
	if err := segment.InstallTiered(dir, s.BaseOffset, s.remoteRef(), s.NextOffset, files); err != nil {
		return fmt.Errorf("%w: %w", ErrBadSnapshot, err)
	}
	return nil
}

func writeSegment(path string, r io.Reader, size int64) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	n, err := io.CopyN(f, r, size)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("%w: segment %s: wrote %d of %d bytes: %v", ErrBadSnapshot, filepath.Base(path), n, size, err)
	}
	return nil
}

func (p *Processor) swapIn(tmp string, h *snapshotHeader) error {
	p.logMu.Lock()
	defer p.logMu.Unlock()
	live := filepath.Join(p.cfg.Dir, "log")
	old := filepath.Join(p.cfg.Dir, "log.old")
	if p.log != nil {
		if err := p.log.Close(); err != nil && !errors.Is(err, segment.ErrClosed) {
			p.logger.Warn("closing log before restore", "error", err)
		}
		p.log = nil
	}
	if err := os.RemoveAll(old); err != nil {
		return err
	}
	if err := os.Rename(live, old); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := os.Rename(tmp, live); err != nil {
		return err
	}
	if err := atomicfile.SyncDir(p.cfg.Dir); err != nil {
		return err
	}
	if err := os.RemoveAll(old); err != nil {
		return err
	}
	log, err := segment.Open(live, p.strictSegment())
	if err != nil {
		return p.fail(err).Err
	}
	log.SetFirstOffset(h.State.Retention.FirstOffset)
	if err := p.writeCheckpoint(checkpoint{Index: h.Index, State: h.State}, true); err != nil {
		return p.fail(err).Err
	}
	if err := writeNodes(p.cfg.Dir, nodesFile{Index: h.Index, Nodes: h.State.Nodes, Members: h.State.Members}); err != nil {
		return p.fail(err).Err
	}
	p.log = log
	p.mu.Lock()
	p.mu.state = h.State.clone()
	p.mu.Unlock()
	p.appendWM, p.nodesWM, p.retentionWM = h.Index, h.Index, h.Index
	p.failed.Store(nil)
	p.applied.Store(h.Index)
	p.nextOffset.Store(h.State.NextOffset)
	p.notify()
	p.logger.Info("fsm restored from snapshot", "index", h.Index, "next_offset", h.State.NextOffset, "segments", len(h.Segments))
	return nil
}

// SnapshotInfo is what a snapshot stream's header says about the cut.
type SnapshotInfo struct {
	// Index is the last Raft index the FSM had applied.
	Index uint64
	// NextOffset is the offset of the first event after the cut.
	NextOffset uint64
	// Segments is the number of segments in the stream.
	Segments int
	// Version is the stream format's version (1 or 2).
	Version int
	// Tiered are the segments a version 2 stream references by object
	// instead of carrying their bytes.
	Tiered []TieredSegment
}

func (h *snapshotHeader) info() SnapshotInfo {
	return SnapshotInfo{Index: h.Index, NextOffset: h.State.NextOffset, Segments: len(h.Segments), Version: h.Version, Tiered: tieredSegments(h.Segments)}
}

// ReadSnapshotInfo reads and checks the header of the snapshot stream r.
// The returned reader yields the whole stream again: the bytes already
// read, then the rest of r.
func ReadSnapshotInfo(r io.Reader) (SnapshotInfo, io.Reader, error) {
	var seen bytes.Buffer
	h, err := readSnapshotHeader(io.TeeReader(r, &seen))
	if err != nil {
		return SnapshotInfo{}, nil, err
	}
	return h.info(), io.MultiReader(&seen, r), nil
}

// ReseedSnapshot copies the snapshot stream r to w for a new cluster
// restored from a backup. Two header fields change, the segment bytes are
// copied unchanged:
//
//   - the Raft index becomes index, the Raft snapshot's index. It may be
//     above the FSM's own (entries that never reach the FSM, such as a
//     new leader's no-op, advance Raft's but not the FSM's), and the FSM
//     state is the same at both. With the header at the Raft index, the
//     restored FSM's applied index equals the seeded snapshot's, so a
//     node does not restore the snapshot again when it starts.
//   - the node table and the membership records (incarnations, removal
//     tombstones) are emptied: the API addresses are the old cluster's
//     nodes, and a follower would forward appends to them until the new
//     nodes register themselves, which they do at start; the new nodes
//     have new data directories, so the old incarnations name nothing.
func ReseedSnapshot(w io.Writer, r io.Reader, index uint64) (SnapshotInfo, error) {
	h, err := readSnapshotHeader(r)
	if err != nil {
		return SnapshotInfo{}, err
	}
	if index < h.Index {
		return SnapshotInfo{}, fmt.Errorf("%w: raft index %d is below the FSM's index %d in the stream", ErrBadSnapshot, index, h.Index)
	}
	h.Index = index
	clear(h.State.Nodes)
	h.State.Members = Membership{}
	if _, err := writeHeader(w, h); err != nil {
		return SnapshotInfo{}, err
	}
	var total int64
	for _, s := range h.Segments {
		total += s.bodySize()
	}
	n, err := io.Copy(w, io.LimitReader(r, total))
	if err != nil {
		return SnapshotInfo{}, err
	}
	if n != total {
		return SnapshotInfo{}, fmt.Errorf("%w: stream ends after %d of %d segment bytes", ErrBadSnapshot, n, total)
	}
	return h.info(), nil
}
