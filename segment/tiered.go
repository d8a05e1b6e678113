package segment

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/tsstore/tsstore/record"
)

// Tiered segments (cold tiering, issue #13): a sealed segment whose .log
// lives in an object store. Its index files stay local; a small marker
// file, <B>.tiered, replaces the .log and says which object holds the
// bytes. Frozen constants.
const (
	// TieredSuffix names a tiered segment's marker file.
	TieredSuffix = ".tiered"
	// TieredMagic starts every marker file.
	TieredMagic = "TSTR"
	// TieredVersion is the marker format's version.
	TieredVersion = 1
	// tieredFixed is the marker's size before the key.
	tieredFixed = 90
	// MaxTieredKey bounds an object key's length in a marker.
	MaxTieredKey = 1024
)

// Errors of tiered segments.
var (
	// ErrRemoteLost is what a Remote's object returns (wrapped) when the
	// object is missing or shorter than its size: the segment's bytes
	// are gone, which a read reports as a *CorruptionError naming the key.
	ErrRemoteLost = errors.New("segment: tiered object missing or short")
	// ErrTiered refuses an operation that needs the segment's local .log
	// (ReplaceSealed, ThinSealed) on a tiered segment.
	ErrTiered = errors.New("segment: the segment is tiered and has no local .log")
	// ErrNoRemote is the error of a read of a tiered segment, or of an
	// Evict, in a log opened without Options.Remote.
	ErrNoRemote = errors.New("segment: a tiered segment needs Options.Remote")
	// ErrRemoteRead wraps the error of a read of a tiered object that
	// failed without saying the object is lost or short (the store is
	// down, slow, or answered with an error): the read may succeed later.
	ErrRemoteRead = errors.New("segment: reading a tiered object failed")
	// ErrRemoteMismatch means Evict was handed a RemoteRef whose size or
	// checksum is not the local segment's.
	ErrRemoteMismatch = errors.New("segment: the object does not match the local segment")
)

// RemoteRef names the object that holds a sealed segment's .log bytes.
type RemoteRef struct {
	Key      string // object key
	Size     int64  // bytes, the segment's size
	Checksum uint32 // CRC-32C of the bytes, the segment's digest
}

// Remote opens objects of the store that tiered segments live in. Open
// must not do I/O (a log opens while the store is down; its reads then
// fail). Implementations are safe for concurrent use.
type Remote interface {
	Open(key string, size int64) (RemoteObject, error)
}

// RemoteObject reads one object. ReadAt is safe for concurrent use. A
// missing object, or one shorter than its size, is an error wrapping
// ErrRemoteLost; other errors (a store that is down) are I/O errors.
type RemoteObject interface {
	io.ReaderAt
	io.Closer
}

// RemotePrefetcher is optionally implemented by a RemoteObject that can
// start reading the bytes at off ahead of a reader (a cache's readahead).
// ReadBatches calls it with 0 on the next tiered segment when it enters a
// tiered segment, so a whole-log replay does not wait for the first block
// of every object. It must not block.
type RemotePrefetcher interface {
	Prefetch(off int64)
}

// prefetchNext hints the tiered segment after s, if any and if it starts
// below end (the reader wants nothing from it otherwise), to start
// fetching its first bytes.
func (l *Log) prefetchNext(s *segment, end uint64) {
	if s == nil || s.remote == nil {
		return
	}
	l.mu.RLock()
	var next *segment
	for i, c := range l.mu.segs {
		if c == s && i+1 < len(l.mu.segs) {
			next = l.mu.segs[i+1]
			break
		}
	}
	l.mu.RUnlock()
	if next == nil || next.remote == nil || next.base >= end {
		return
	}
	if rf, ok := next.f.(*remoteFile); ok {
		if p, ok := rf.obj.(RemotePrefetcher); ok {
			p.Prefetch(0)
		}
	}
}

// tieredName is the marker file of the segment at base.
func tieredName(base uint64) string { return fmt.Sprintf("%0*d%s", nameDigits, base, TieredSuffix) }

// marker is the content of a <B>.tiered file.
type marker struct {
	base    uint64
	size    int64
	sum     uint32
	firstTS int64
	last    record.Header // the segment's last batch header
	lastRaw [record.HeaderSize]byte
	key     string
}

func encodeMarker(m *marker) []byte {
	b := make([]byte, tieredFixed+len(m.key)+4)
	copy(b[0:4], TieredMagic)
	b[4] = TieredVersion
	binary.BigEndian.PutUint64(b[8:16], m.base)
	binary.BigEndian.PutUint64(b[16:24], m.last.NextOffset())
	binary.BigEndian.PutUint64(b[24:32], uint64(m.size))
	binary.BigEndian.PutUint32(b[32:36], m.sum)
	binary.BigEndian.PutUint64(b[36:44], uint64(m.firstTS))
	copy(b[44:88], m.lastRaw[:])
	binary.BigEndian.PutUint16(b[88:90], uint16(len(m.key)))
	copy(b[90:], m.key)
	n := tieredFixed + len(m.key)
	binary.BigEndian.PutUint32(b[n:], crc32.Checksum(b[:n], castagnoli))
	return b
}

// decodeMarker parses and checks a marker of the segment at base.
func decodeMarker(b []byte, base uint64) (*marker, error) {
	if len(b) < tieredFixed+4 {
		return nil, fmt.Errorf("%d bytes, less than a marker", len(b))
	}
	n := int(binary.BigEndian.Uint16(b[88:90]))
	switch {
	case string(b[0:4]) != TieredMagic:
		return nil, fmt.Errorf("magic %q", b[0:4])
	case b[4] != TieredVersion:
		return nil, fmt.Errorf("version %d", b[4])
	case b[5] != 0 || b[6] != 0 || b[7] != 0:
		return nil, fmt.Errorf("reserved bytes %x", b[5:8])
	case n == 0 || n > MaxTieredKey || len(b) != tieredFixed+n+4:
		return nil, fmt.Errorf("key of %d bytes in a file of %d", n, len(b))
	case crc32.Checksum(b[:tieredFixed+n], castagnoli) != binary.BigEndian.Uint32(b[tieredFixed+n:]):
		return nil, errors.New("checksum mismatch")
	}
	m := &marker{base: binary.BigEndian.Uint64(b[8:16]), size: int64(binary.BigEndian.Uint64(b[24:32])),
		sum: binary.BigEndian.Uint32(b[32:36]), firstTS: int64(binary.BigEndian.Uint64(b[36:44])), key: string(b[90 : 90+n])}
	copy(m.lastRaw[:], b[44:88])
	h, err := record.ParseHeader(m.lastRaw[:])
	if err != nil {
		return nil, fmt.Errorf("last batch header: %v", err)
	}
	m.last = h
	switch next := binary.BigEndian.Uint64(b[16:24]); {
	case m.base != base:
		return nil, fmt.Errorf("base offset %d in the marker of %d", m.base, base)
	case next != h.NextOffset() || h.BaseOffset < base:
		return nil, fmt.Errorf("next offset %d, last batch [%d, %d)", next, h.BaseOffset, h.NextOffset())
	case m.size <= 0 || m.size > MaxSegmentBytes+record.MaxBatchSize:
		return nil, fmt.Errorf("size %d", m.size)
	}
	return m, nil
}

// remoteFile is a tiered segment's .log: reads go to the object store,
// writes are refused. It turns a lost object into a *CorruptionError
// naming the key.
type remoteFile struct {
	obj  RemoteObject
	path string // the marker
	key  string
	base uint64
	size int64
}

var _ File = (*remoteFile)(nil)

func (r *remoteFile) ReadAt(p []byte, off int64) (int, error) {
	if off >= r.size {
		return 0, io.EOF
	}
	want := p
	if int64(len(p)) > r.size-off {
		want = p[:r.size-off]
	}
	n, err := r.obj.ReadAt(want, off)
	switch {
	case errors.Is(err, ErrRemoteLost):
		return n, &CorruptionError{Path: r.path, Key: r.key, Position: off, Offset: r.base, Reason: err.Error()}
	case n < len(want) && (err == nil || errors.Is(err, io.EOF)):
		return n, &CorruptionError{Path: r.path, Key: r.key, Position: off + int64(n), Offset: r.base,
			Reason: fmt.Sprintf("the object ended after %d of %d bytes", off+int64(n), r.size)}
	case err != nil && !errors.Is(err, io.EOF):
		return n, fmt.Errorf("%w: object %q at %d: %w", ErrRemoteRead, r.key, off, err)
	}
	if len(want) < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (r *remoteFile) Write([]byte) (int, error) { return 0, ErrTiered }
func (r *remoteFile) Close() error              { return r.obj.Close() }
func (r *remoteFile) Sync() error               { return nil }
func (r *remoteFile) Truncate(int64) error      { return ErrTiered }
func (r *remoteFile) Stat() (fs.FileInfo, error) {
	return remoteInfo{name: filepath.Base(r.path), size: r.size}, nil
}

type remoteInfo struct {
	name string
	size int64
}

func (i remoteInfo) Name() string       { return i.name }
func (i remoteInfo) Size() int64        { return i.size }
func (i remoteInfo) Mode() fs.FileMode  { return 0o444 }
func (i remoteInfo) ModTime() time.Time { return time.Time{} }
func (i remoteInfo) IsDir() bool        { return false }
func (i remoteInfo) Sys() any           { return nil }

// Evict replaces the sealed segment at base's local .log with the object
// ref names, which the caller checked (a Head: size and checksum against
// what the cluster committed). Evict checks ref against the segment too:
// its size, and the CRC-32C of the local bytes, read whole (so bytes that
// rotted locally are never the reason an object is trusted). Then it
// publishes <B>.tiered (tmp, fsync, rename, fsync directory), swaps the
// segment for one that reads the object (readers that hold the old one
// keep preading the local file until they release it), and removes the
// .log and fsyncs the directory. A crash leaves the .log (Open then
// removes a marker beside it) or the marker alone. The index files stay.
// Evicting a segment already tiered under ref.Key does nothing. Evict is
// serialized with ReplaceSealed and DropSealed.
func (l *Log) Evict(base uint64, ref RemoteRef) error {
	if l.opts.Remote == nil {
		return ErrNoRemote
	}
	if len(ref.Key) == 0 || len(ref.Key) > MaxTieredKey {
		return fmt.Errorf("segment: evict %d: object key of %d bytes", base, len(ref.Key))
	}
	l.repl.Lock()
	defer l.repl.Unlock()
	old, err := l.sealed(base)
	if err != nil {
		return err
	}
	defer old.release()
	switch {
	case old.damaged != nil:
		return old.damaged
	case old.remote != nil && old.remote.Key == ref.Key:
		return nil
	case old.remote != nil:
		return fmt.Errorf("%w: segment %d is tiered as %q already", ErrTiered, base, old.remote.Key)
	case old.size != ref.Size:
		return fmt.Errorf("%w: segment %d has %d bytes, the object %q %d", ErrRemoteMismatch, base, old.size, ref.Key, ref.Size)
	}
	m := &marker{base: base, size: old.size, key: ref.Key}
	err = walkBatches(old.f, old.path, 0, old.size, base, false, func(b walkedBatch) error {
		m.sum = crc32.Update(m.sum, castagnoli, b.Raw)
		if b.Pos == 0 {
			m.firstTS = b.Header.Timestamp
		}
		m.last = b.Header
		copy(m.lastRaw[:], b.Raw[:record.HeaderSize])
		return nil
	})
	if err != nil {
		return l.errClosedRead(err)
	}
	if m.sum != ref.Checksum || m.last.NextOffset() != old.next {
		return fmt.Errorf("%w: segment %d is [%d, %d) with crc32c %08x, the object %q has crc32c %08x",
			ErrRemoteMismatch, base, base, m.last.NextOffset(), m.sum, ref.Key, ref.Checksum)
	}
	ns, err := l.openRemote(m)
	if err != nil {
		return err
	}
	ix, err := newFileIndex(l.fs, l.dir, base, old.ix.n)
	if err == nil {
		ns.ix = ix
		ns.streams, err = openStreams(l.fs, filepath.Join(l.dir, streamsName(base)), base, ns.size)
	}
	mpath := filepath.Join(l.dir, tieredName(base))
	if err == nil {
		err = writeFileAtomic(l.fs, mpath, encodeMarker(m))
	}
	if err == nil {
		err = l.fs.SyncDir(l.dir)
	}
	if err != nil {
		ns.closeFiles()
		_ = l.fs.Remove(mpath)
		return fmt.Errorf("segment: evict %d: %w", base, err)
	}
	if err := l.swapSealed(old, ns); err != nil {
		return err
	}
	if err := l.fs.Remove(old.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("segment: evict %d: remove %s: %w", base, old.path, err)
	}
	if err := l.fs.SyncDir(l.dir); err != nil {
		return fmt.Errorf("segment: fsync %s: %w", l.dir, err)
	}
	return nil
}

// openRemote returns a sealed segment that reads m's object, without its
// index files.
func (l *Log) openRemote(m *marker) (*segment, error) {
	var obj RemoteObject = noRemote{key: m.key}
	if l.opts.Remote != nil {
		var err error
		if obj, err = l.opts.Remote.Open(m.key, m.size); err != nil {
			return nil, fmt.Errorf("segment: open tiered object %q: %w", m.key, err)
		}
	}
	path := filepath.Join(l.dir, tieredName(m.base))
	s := &segment{base: m.base, path: path, sealed: true, size: m.size, next: m.last.NextOffset(),
		firstTS: m.firstTS, lastTS: m.last.Timestamp, digest: m.sum, digestKnown: true,
		remote: &RemoteRef{Key: m.key, Size: m.size, Checksum: m.sum}}
	s.f = &remoteFile{obj: obj, path: path, key: m.key, base: m.base, size: m.size}
	s.refs.Store(1)
	return s, nil
}

// noRemote is a tiered segment's object in a log opened without
// Options.Remote (an offline tool): every read fails with ErrNoRemote.
type noRemote struct{ key string }

func (n noRemote) ReadAt([]byte, int64) (int, error) {
	return 0, fmt.Errorf("%w: object %q", ErrNoRemote, n.key)
}
func (n noRemote) Close() error { return nil }

// openTiered opens the segment at base from its marker. With good index
// files it reads nothing of the object. Index files that are missing or
// fail Open's checks are taken from the store's index bundle when the
// Remote is a RemoteIndexer and the bundle checks out
// (RecoveryInfo.FetchedIndexes), else rebuilt from the object, read
// whole (RecoveryInfo.IndexBundleFailures says why not the bundle).
func (l *Log) openTiered(base uint64) (*segment, error) {
	mpath := filepath.Join(l.dir, tieredName(base))
	b, err := readWhole(l.fs, mpath, tieredFixed+MaxTieredKey+4)
	if err != nil {
		return nil, fmt.Errorf("segment: read %s: %w", mpath, err)
	}
	m, err := decodeMarker(b, base)
	if err != nil {
		return nil, corruptf(mpath, 0, base, "%v", err)
	}
	s, err := l.openRemote(m)
	if err != nil {
		return nil, err
	}
	x, _, last, xerr := openIndex(l.fs, l.dir, base, s.size)
	sx, _ := openStreams(l.fs, filepath.Join(l.dir, streamsName(base)), base, s.size)
	if xerr == nil && sx != nil && sx.header.next == s.next && base+uint64(last.rel) <= m.last.BaseOffset {
		s.ix, s.streams = x, sx
		l.mu.last, l.mu.hasLast = m.last, true
		return s, nil
	}
	if x != nil {
		x.f.Close()
	}
	if sx != nil {
		sx.f.Close()
	}
	if l.opts.Remote != nil {
		// The store's bundle first: a few bytes instead of the object.
		ferr := l.fetchIndexes(s, m)
		if ferr == nil {
			l.mu.last, l.mu.hasLast = m.last, true
			l.recovery.FetchedIndexes = append(l.recovery.FetchedIndexes, mpath)
			return s, nil
		}
		l.recovery.IndexBundleFailures = append(l.recovery.IndexBundleFailures, fmt.Sprintf("%s: %v", mpath, ferr))
	}
	if err := l.indexSealed(s); err != nil {
		s.closeFiles()
		return nil, err
	}
	if s.digest != m.sum || s.next != m.last.NextOffset() {
		s.closeFiles()
		return nil, &CorruptionError{Path: mpath, Key: m.key, Offset: base,
			Reason: fmt.Sprintf("the object is [%d, %d) with crc32c %08x, the marker says [%d, %d) with %08x",
				base, s.next, s.digest, base, m.last.NextOffset(), m.sum)}
	}
	return s, nil
}

// withKey names the object key in a corruption error of a tiered
// segment, when the error does not name it yet: a batch that failed its
// CRC on bytes read from the store (the error names the marker), or an
// index entry that does not match the batch it points at (it names the
// local index file, but the object's bytes were checked against the
// cluster's digest when the .log was evicted, so they are the first
// suspect).
func (l *Log) withKey(err error) error {
	var ce *CorruptionError
	if err == nil || !errors.As(err, &ce) || ce.Key != "" {
		return err
	}
	name, ok := filepath.Base(ce.Path), false
	var base uint64
	for _, suffix := range []string{TieredSuffix, IndexSuffix, TimeIndexSuffix, StreamsSuffix} {
		if base, ok = parseBase(name, suffix); ok {
			break
		}
	}
	if !ok {
		return err
	}
	l.mu.RLock()
	defer l.mu.RUnlock()
	for _, s := range l.mu.segs {
		if s.base == base && s.remote != nil {
			c := *ce
			c.Key = s.remote.Key
			return &c
		}
	}
	return err
}

// parseBase returns the base offset of a file name of the segment's
// form: 20 digits and suffix.
func parseBase(name, suffix string) (uint64, bool) {
	digits, ok := strings.CutSuffix(name, suffix)
	if !ok || len(digits) != nameDigits {
		return 0, false
	}
	v, err := strconv.ParseUint(digits, 10, 64)
	return v, err == nil
}
