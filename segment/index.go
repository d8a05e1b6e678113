package segment

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Frozen file-format constants. See the package documentation for the
// layouts; changing any of them breaks existing data directories.
const (
	// LogSuffix, IndexSuffix and TimeIndexSuffix name a segment's files.
	LogSuffix       = ".log"
	IndexSuffix     = ".index"
	TimeIndexSuffix = ".timeindex"
	// TmpSuffix marks a file being published; leftovers are removed at Open.
	TmpSuffix = ".tmp"
	// nameDigits is the zero-padded width of the base offset in file names.
	nameDigits = 20

	// IndexEntrySize is the size of one .index entry:
	// [relative offset u32 BE][file position u32 BE].
	IndexEntrySize = 8
	// TimeIndexEntrySize is the size of one .timeindex entry:
	// [timestamp i64 BE][relative offset u32 BE].
	TimeIndexEntrySize = 12
)

// FileName is the name of the log file of the segment starting at
// baseOffset: the offset zero-padded to 20 digits, then ".log".
func FileName(baseOffset uint64) string {
	return fmt.Sprintf("%0*d%s", nameDigits, baseOffset, LogSuffix)
}

func indexName(baseOffset uint64) string {
	return fmt.Sprintf("%0*d%s", nameDigits, baseOffset, IndexSuffix)
}

func timeIndexName(baseOffset uint64) string {
	return fmt.Sprintf("%0*d%s", nameDigits, baseOffset, TimeIndexSuffix)
}

// parseLogName returns the base offset encoded in a .log file name.
func parseLogName(name string) (uint64, error) {
	digits, ok := strings.CutSuffix(name, LogSuffix)
	if !ok || len(digits) != nameDigits {
		return 0, fmt.Errorf("segment: file name %q is not %d digits + %q", name, nameDigits, LogSuffix)
	}
	for _, c := range digits {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("segment: file name %q is not %d digits + %q", name, nameDigits, LogSuffix)
		}
	}
	v, err := strconv.ParseUint(digits, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("segment: file name %q: %v", name, err)
	}
	return v, nil
}

// indexEntry is one point of a segment's sparse index, held in memory. The
// .index and .timeindex files hold the same points: entry i of each file
// describes the same batch.
type indexEntry struct {
	rel uint32 // batch base offset - segment base offset
	pos uint32 // file position of the batch
	ts  int64  // batch timestamp
}

// indexer decides where index entries go. The same rule is used when
// appending and when rebuilding, so a rebuilt index equals the lost one.
type indexer struct {
	interval int64
}

// want reports whether a batch at pos needs an entry after entries.
func (x indexer) want(entries []indexEntry, pos int64) bool {
	return len(entries) == 0 || pos-int64(entries[len(entries)-1].pos) >= x.interval
}

// lookup returns the index of the last entry whose relative offset is <=
// rel. entries must not be empty and entries[0].rel must be 0.
func lookup(entries []indexEntry, rel uint64) int {
	i := sort.Search(len(entries), func(i int) bool { return uint64(entries[i].rel) > rel })
	return max(i-1, 0)
}

func encodeIndex(entries []indexEntry) (index, times []byte) {
	index = make([]byte, 0, len(entries)*IndexEntrySize)
	times = make([]byte, 0, len(entries)*TimeIndexEntrySize)
	for _, e := range entries {
		index = binary.BigEndian.AppendUint32(index, e.rel)
		index = binary.BigEndian.AppendUint32(index, e.pos)
		times = binary.BigEndian.AppendUint64(times, uint64(e.ts))
		times = binary.BigEndian.AppendUint32(times, e.rel)
	}
	return index, times
}

// decodeIndex parses and checks the two index files of a segment whose log
// file is logSize bytes. Any problem means the files must be rebuilt.
func decodeIndex(index, times []byte, logSize int64) ([]indexEntry, error) {
	switch {
	case len(index) == 0 || len(index)%IndexEntrySize != 0:
		return nil, fmt.Errorf("index size %d is not a positive multiple of %d", len(index), IndexEntrySize)
	case len(times)%TimeIndexEntrySize != 0:
		return nil, fmt.Errorf("time index size %d is not a multiple of %d", len(times), TimeIndexEntrySize)
	case len(index)/IndexEntrySize != len(times)/TimeIndexEntrySize:
		return nil, fmt.Errorf("index has %d entries, time index %d", len(index)/IndexEntrySize, len(times)/TimeIndexEntrySize)
	}
	n := len(index) / IndexEntrySize
	entries := make([]indexEntry, n)
	for i := range entries {
		e := indexEntry{
			rel: binary.BigEndian.Uint32(index[i*IndexEntrySize:]),
			pos: binary.BigEndian.Uint32(index[i*IndexEntrySize+4:]),
			ts:  int64(binary.BigEndian.Uint64(times[i*TimeIndexEntrySize:])),
		}
		trel := binary.BigEndian.Uint32(times[i*TimeIndexEntrySize+8:])
		switch {
		case trel != e.rel:
			return nil, fmt.Errorf("entry %d: time index offset %d, index offset %d", i, trel, e.rel)
		case int64(e.pos) >= logSize:
			return nil, fmt.Errorf("entry %d: position %d past end of log (%d bytes)", i, e.pos, logSize)
		case i == 0 && (e.rel != 0 || e.pos != 0):
			return nil, fmt.Errorf("entry 0 is (%d, %d), want (0, 0)", e.rel, e.pos)
		case i > 0 && (e.rel <= entries[i-1].rel || e.pos <= entries[i-1].pos || e.ts < entries[i-1].ts):
			return nil, fmt.Errorf("entry %d not after entry %d", i, i-1)
		}
		entries[i] = e
	}
	return entries, nil
}

// readWhole reads a small file through fsys. A missing file is an error,
// and so is one of more than max bytes (max > 0), before it is read.
func readWhole(fsys FS, path string, max int64) ([]byte, error) {
	f, err := fsys.OpenFile(path, os.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if max > 0 && fi.Size() > max {
		return nil, fmt.Errorf("%d bytes, more than the %d expected", fi.Size(), max)
	}
	buf := make([]byte, fi.Size())
	if _, err := f.ReadAt(buf, 0); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return buf, nil
}

// writeIndexFiles publishes both index files of a segment. The caller
// fsyncs the directory.
func writeIndexFiles(fsys FS, dir string, base uint64, entries []indexEntry) error {
	index, times := encodeIndex(entries)
	if err := writeFileAtomic(fsys, filepath.Join(dir, indexName(base)), index); err != nil {
		return err
	}
	return writeFileAtomic(fsys, filepath.Join(dir, timeIndexName(base)), times)
}

// writeFileAtomic writes path.tmp, fsyncs it and renames it over path. The
// rename is durable once the caller fsyncs the directory.
func writeFileAtomic(fsys FS, path string, data []byte) (err error) {
	tmp := path + TmpSuffix
	if err := writeFileSynced(fsys, tmp, data); err != nil {
		return err
	}
	if err := fsys.Rename(tmp, path); err != nil {
		_ = fsys.Remove(tmp)
		return err
	}
	return nil
}

// writeFileSynced writes data to path (created or truncated) and fsyncs
// it; on error the file is removed.
func writeFileSynced(fsys FS, path string, data []byte) (err error) {
	f, err := fsys.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = fsys.Remove(path)
		}
	}()
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
