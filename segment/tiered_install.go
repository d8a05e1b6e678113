package segment

import (
	"errors"
	"fmt"
	"path/filepath"
)

// TieredPaths are a tiered segment's local files in the order a snapshot
// stream carries them: the <B>.tiered marker, <B>.index, <B>.timeindex
// and <B>.streams, in the log directory dir.
func TieredPaths(dir string, base uint64) [4]string {
	return [4]string{
		filepath.Join(dir, tieredName(base)),
		filepath.Join(dir, indexName(base)),
		filepath.Join(dir, timeIndexName(base)),
		filepath.Join(dir, streamsName(base)),
	}
}

// ErrBadTieredFiles marks tiered segment files (InstallTiered) that fail
// their checks: a marker that does not decode or does not name ref, or
// index files that do not describe the segment.
var ErrBadTieredFiles = errors.New("segment: bad tiered segment files")

// InstallTiered publishes a tiered segment into dir, a log directory that
// is not open (a snapshot being restored): the files are TieredPaths'
// contents, in that order. It reads nothing of the object. It checks
// what it can without it: the marker decodes (its CRC) and names ref and
// next (the segment's end), the index files pass Open's checks against
// the marker's size and end. It writes the index files, then the marker,
// each as tmp, fsync, rename, and fsyncs dir; on a failed check it
// removes what it wrote and returns an error wrapping ErrBadTieredFiles.
// Open then takes the segment from the marker without reading the object.
func InstallTiered(dir string, base uint64, ref RemoteRef, next uint64, files [4][]byte) error {
	if err := CheckMarker(files[0], base, ref, next); err != nil {
		return err
	}
	m, _ := decodeMarker(files[0], base)
	fsys := OSFS{}
	paths := TieredPaths(dir, base)
	remove := func() {
		for _, p := range paths {
			_ = fsys.Remove(p)
		}
	}
	for i := 1; i < 4; i++ {
		if err := writeFileAtomic(fsys, paths[i], files[i]); err != nil {
			remove()
			return err
		}
	}
	x, _, last, err := openIndex(fsys, dir, base, m.size)
	if err == nil {
		x.f.Close()
		if base+uint64(last.rel) > m.last.BaseOffset {
			err = fmt.Errorf("last index entry at offset %d, after the last batch at %d", base+uint64(last.rel), m.last.BaseOffset)
		}
	}
	if err == nil {
		var sx *streamsIndex
		if sx, err = openStreams(fsys, paths[3], base, m.size); err == nil {
			sx.f.Close()
			if sx.header.next != next {
				err = fmt.Errorf("%s ends at offset %d, the segment at %d", filepath.Base(paths[3]), sx.header.next, next)
			}
		}
	}
	if err != nil {
		remove()
		return fmt.Errorf("%w: segment %d: %v", ErrBadTieredFiles, base, err)
	}
	if err := writeFileAtomic(fsys, paths[0], files[0]); err != nil {
		remove()
		return err
	}
	if err := fsys.SyncDir(dir); err != nil {
		return fmt.Errorf("segment: fsync %s: %w", dir, err)
	}
	return nil
}

// CheckMarker decodes the marker b of the segment at base (as a
// <B>.tiered file holds it) and checks that it names ref and ends at
// next. It reads nothing of the object.
func CheckMarker(b []byte, base uint64, ref RemoteRef, next uint64) error {
	m, err := decodeMarker(b, base)
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrBadTieredFiles, tieredName(base), err)
	}
	if m.key != ref.Key || m.size != ref.Size || m.sum != ref.Checksum || m.last.NextOffset() != next {
		return fmt.Errorf("%w: %s names %q of %d bytes, crc32c %08x, ending at %d; want %q of %d bytes, crc32c %08x, ending at %d",
			ErrBadTieredFiles, tieredName(base), m.key, m.size, m.sum, m.last.NextOffset(), ref.Key, ref.Size, ref.Checksum, next)
	}
	return nil
}
