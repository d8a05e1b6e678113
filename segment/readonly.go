package segment

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
)

// ErrReadOnly is returned by ReadOnlyFS for any change to the filesystem.
var ErrReadOnly = errors.New("segment: read-only")

// ReadOnlyFS wraps an FS and refuses every change: creating, writing,
// truncating, renaming or removing a file. Files that exist open
// read-only. A Log opened through it works as long as Open finds nothing
// to repair; a torn tail, a stale temporary file or a missing index makes
// Open fail with ErrReadOnly naming the file instead of repairing it.
// `tsstore verify` opens data directories through it, so a scrub never
// changes the evidence.
type ReadOnlyFS struct {
	// FS is the underlying filesystem; nil means OSFS.
	FS FS
}

func (r ReadOnlyFS) base() FS {
	if r.FS == nil {
		return OSFS{}
	}
	return r.FS
}

const writeFlags = os.O_WRONLY | os.O_RDWR | os.O_CREATE | os.O_TRUNC | os.O_APPEND | os.O_EXCL

// OpenFile opens an existing file read-only; creating one is refused.
func (r ReadOnlyFS) OpenFile(name string, flag int, perm fs.FileMode) (File, error) {
	if flag&(os.O_CREATE|os.O_TRUNC|os.O_EXCL) != 0 {
		if _, err := r.base().Stat(name); err != nil || flag&(os.O_TRUNC|os.O_EXCL) != 0 {
			return nil, fmt.Errorf("%w: would create or truncate %s", ErrReadOnly, name)
		}
	}
	f, err := r.base().OpenFile(name, flag&^writeFlags, 0)
	if err != nil {
		return nil, err
	}
	return readOnlyFile{File: f, name: name}, nil
}

// Remove is refused.
func (r ReadOnlyFS) Remove(name string) error {
	return fmt.Errorf("%w: would remove %s", ErrReadOnly, name)
}

// Rename is refused.
func (r ReadOnlyFS) Rename(oldpath, newpath string) error {
	return fmt.Errorf("%w: would rename %s to %s", ErrReadOnly, oldpath, newpath)
}

// ReadDir lists name.
func (r ReadOnlyFS) ReadDir(name string) ([]fs.DirEntry, error) { return r.base().ReadDir(name) }

// MkdirAll succeeds for an existing directory and is refused otherwise.
func (r ReadOnlyFS) MkdirAll(path string, perm fs.FileMode) error {
	if fi, err := r.base().Stat(path); err == nil && fi.IsDir() {
		return nil
	}
	return fmt.Errorf("%w: would create directory %s", ErrReadOnly, path)
}

// Stat describes name.
func (r ReadOnlyFS) Stat(name string) (fs.FileInfo, error) { return r.base().Stat(name) }

// SyncDir does nothing: nothing changed.
func (r ReadOnlyFS) SyncDir(dir string) error { return nil }

type readOnlyFile struct {
	File
	name string
}

func (f readOnlyFile) Write([]byte) (int, error) {
	return 0, fmt.Errorf("%w: would write %s", ErrReadOnly, f.name)
}

func (f readOnlyFile) Truncate(size int64) error {
	return fmt.Errorf("%w: would truncate %s to %d bytes", ErrReadOnly, f.name, size)
}

func (f readOnlyFile) Sync() error { return nil }
