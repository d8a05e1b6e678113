package backup

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
)

// Frozen constants of the file format (see the package doc).
const (
	Magic        = "TSBACKUP"
	Version      = 1
	TrailerMagic = "TSBKEND1"
	PrefixSize   = 16
	TrailerSize  = 48
	MaxInfoSize  = 64 << 10
)

// ErrCorrupt marks a backup file that is truncated, extended or altered,
// or is not a backup file at all. The wrapping message says which part.
var ErrCorrupt = errors.New("backup: corrupt or truncated file")

// Info describes the cut a backup holds.
type Info struct {
	// Cluster and NodeID name the cluster and the node that served the backup.
	Cluster string `json:"cluster"`
	NodeID  string `json:"node_id"`
	// RaftIndex and RaftTerm are the Raft snapshot's index and term: the
	// backup holds everything applied up to and including RaftIndex.
	RaftIndex uint64 `json:"raft_index"`
	RaftTerm  uint64 `json:"raft_term"`
	// NextOffset is the offset the first event after the cut gets.
	NextOffset uint64 `json:"next_offset"`
	// SizeBytes is the length of the snapshot stream, bytes.
	SizeBytes uint64 `json:"size_bytes"`
	// CreatedUnixNano is when the serving node started the backup.
	CreatedUnixNano int64 `json:"created_unix_nano"`
}

func (i Info) validate() error {
	switch {
	case i.Cluster == "":
		return errors.New("info has no cluster name")
	case i.RaftIndex == 0:
		return errors.New("info has raft index 0")
	case i.SizeBytes == 0:
		return errors.New("info has an empty snapshot stream")
	}
	return nil
}

// Writer writes one backup file: NewWriter writes the prefix and the
// info, Write takes the snapshot stream, Close writes the trailer.
type Writer struct {
	w    io.Writer
	h    hash.Hash
	info Info
	head int    // prefix and info bytes
	body uint64 // stream bytes written
	err  error
}

// NewWriter starts a backup file on w.
func NewWriter(w io.Writer, info Info) (*Writer, error) {
	if err := info.validate(); err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	js, err := json.Marshal(info)
	if err != nil {
		return nil, err
	}
	if len(js) > MaxInfoSize {
		return nil, fmt.Errorf("backup: info of %d bytes is larger than %d", len(js), MaxInfoSize)
	}
	bw := &Writer{w: w, h: sha256.New(), info: info, head: PrefixSize + len(js)}
	var prefix [PrefixSize]byte
	copy(prefix[:8], Magic)
	binary.BigEndian.PutUint32(prefix[8:12], Version)
	binary.BigEndian.PutUint32(prefix[12:16], uint32(len(js)))
	if err := bw.write(prefix[:]); err != nil {
		return nil, err
	}
	if err := bw.write(js); err != nil {
		return nil, err
	}
	return bw, nil
}

func (b *Writer) write(p []byte) error {
	if b.err != nil {
		return b.err
	}
	b.h.Write(p)
	_, b.err = b.w.Write(p)
	return b.err
}

// Write appends snapshot stream bytes. It refuses bytes beyond the size
// the info announced.
func (b *Writer) Write(p []byte) (int, error) {
	if b.body+uint64(len(p)) > b.info.SizeBytes {
		return 0, fmt.Errorf("backup: stream longer than the %d bytes announced", b.info.SizeBytes)
	}
	if err := b.write(p); err != nil {
		return 0, err
	}
	b.body += uint64(len(p))
	return len(p), nil
}

// Written is the number of stream bytes written so far.
func (b *Writer) Written() uint64 { return b.body }

// Close writes the trailer. It fails, writing nothing, if the stream is
// shorter than announced. It does not close the underlying writer.
func (b *Writer) Close() error {
	if b.err != nil {
		return b.err
	}
	if b.body != b.info.SizeBytes {
		return fmt.Errorf("backup: stream ended after %d of %d bytes", b.body, b.info.SizeBytes)
	}
	length := uint64(b.head) + b.body
	var t [TrailerSize]byte
	copy(t[:8], TrailerMagic)
	binary.BigEndian.PutUint64(t[8:16], length)
	copy(t[16:], b.h.Sum(nil))
	_, b.err = b.w.Write(t[:])
	return b.err
}

// File is a verified backup file opened for reading.
type File struct {
	// Info is the backup's header.
	Info Info
	f    *os.File
	off  int64 // where the stream starts
}

// Open opens path and verifies the whole file (structure and SHA-256).
// progress, if not nil, is called with the bytes hashed so far and the
// total. Nothing of the stream is trusted before Open returns.
func Open(path string, progress func(done, total int64)) (*File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	info, off, err := Verify(f, fi.Size(), progress)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &File{Info: info, f: f, off: off}, nil
}

// Stream returns a reader over the snapshot stream.
func (f *File) Stream() io.Reader {
	return io.NewSectionReader(f.f, f.off, int64(f.Info.SizeBytes))
}

// Close closes the file.
func (f *File) Close() error { return f.f.Close() }

// Verify checks a backup of size bytes read through r: prefix, info,
// trailer and checksum. It returns the info and the position where the
// snapshot stream starts.
func Verify(r io.ReaderAt, size int64, progress func(done, total int64)) (Info, int64, error) {
	var info Info
	if size < PrefixSize+TrailerSize {
		return info, 0, fmt.Errorf("%w: %d bytes is shorter than the smallest backup (%d)", ErrCorrupt, size, PrefixSize+TrailerSize)
	}
	var prefix [PrefixSize]byte
	if _, err := r.ReadAt(prefix[:], 0); err != nil {
		return info, 0, fmt.Errorf("%w: reading prefix: %v", ErrCorrupt, err)
	}
	if string(prefix[:8]) != Magic {
		return info, 0, fmt.Errorf("%w: magic %q, want %q (not a tsstore backup)", ErrCorrupt, prefix[:8], Magic)
	}
	if v := binary.BigEndian.Uint32(prefix[8:12]); v != Version {
		return info, 0, fmt.Errorf("%w: version %d, this tsstore reads version %d", ErrCorrupt, v, Version)
	}
	n := int64(binary.BigEndian.Uint32(prefix[12:16]))
	if n == 0 || n > MaxInfoSize || PrefixSize+n+TrailerSize > size {
		return info, 0, fmt.Errorf("%w: info length %d does not fit a file of %d bytes", ErrCorrupt, n, size)
	}
	var t [TrailerSize]byte
	if _, err := r.ReadAt(t[:], size-TrailerSize); err != nil {
		return info, 0, fmt.Errorf("%w: reading trailer: %v", ErrCorrupt, err)
	}
	if string(t[:8]) != TrailerMagic {
		return info, 0, fmt.Errorf("%w: no trailer at the end of the file (truncated or extended)", ErrCorrupt)
	}
	if l := binary.BigEndian.Uint64(t[8:16]); l != uint64(size-TrailerSize) {
		return info, 0, fmt.Errorf("%w: trailer says %d bytes before it, the file has %d (truncated or extended)", ErrCorrupt, l, size-TrailerSize)
	}
	h := sha256.New()
	body := io.NewSectionReader(r, 0, size-TrailerSize)
	if _, err := copyProgress(h, body, size-TrailerSize, progress); err != nil {
		return info, 0, fmt.Errorf("%w: reading: %v", ErrCorrupt, err)
	}
	if !bytes.Equal(h.Sum(nil), t[16:]) {
		return info, 0, fmt.Errorf("%w: SHA-256 mismatch (the file was altered or damaged)", ErrCorrupt)
	}
	js := make([]byte, n)
	if _, err := r.ReadAt(js, PrefixSize); err != nil {
		return info, 0, fmt.Errorf("%w: reading info: %v", ErrCorrupt, err)
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&info); err != nil {
		return info, 0, fmt.Errorf("%w: info: %v", ErrCorrupt, err)
	}
	if err := info.validate(); err != nil {
		return info, 0, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	if uint64(PrefixSize+n)+info.SizeBytes != uint64(size-TrailerSize) {
		return info, 0, fmt.Errorf("%w: info says a stream of %d bytes, the file holds %d", ErrCorrupt, info.SizeBytes, size-TrailerSize-PrefixSize-n)
	}
	return info, PrefixSize + n, nil
}

// copyProgress copies r to w in 1 MiB reads, reporting progress every 16 MiB.
func copyProgress(w io.Writer, r io.Reader, total int64, progress func(done, total int64)) (int64, error) {
	buf := make([]byte, 1<<20)
	var done, reported int64
	if progress != nil {
		progress(0, total)
	}
	for {
		n, err := r.Read(buf)
		if n > 0 {
			w.Write(buf[:n])
			done += int64(n)
			if progress != nil && done-reported >= 16<<20 {
				progress(done, total)
				reported = done
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return done, err
		}
	}
	if progress != nil {
		progress(done, total)
	}
	return done, nil
}
