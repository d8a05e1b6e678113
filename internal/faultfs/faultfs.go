// Package faultfs is a segment.FS that loses what was not fsynced when the
// process dies, the way a machine loses its page cache on power loss.
//
// Every Write is kept in the process's memory; Sync writes the pending
// bytes of that file to the operating system and fsyncs them. A SIGKILL
// therefore leaves each file with exactly its synced prefix, plus, when
// partial writeback is enabled, a random prefix of the unsynced bytes that
// the "kernel" happened to flush early (so the tail can end mid-batch, a
// torn write). Reads, Stat and Truncate see synced and pending bytes as
// one file, so the running process observes ordinary file semantics.
//
// Invariants:
//   - Writes append at the file's logical end (the segment package opens
//     every file it writes with O_APPEND or writes it once from 0).
//   - The bytes on disk are always a prefix of the logical file.
//   - Pending bytes survive Close and Rename (they are in the page cache),
//     never a process exit.
//
// Only files opened through the FS are affected: tsstore installs it as
// the segment log's filesystem (cmd/tsstore, build tag faultfs). Snapshot
// and checkpoint files are written by the fsm with os directly and fsynced.
package faultfs

import (
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"

	"github.com/tsstore/tsstore/segment"
)

// FS is the lossy filesystem. Its zero value is not usable; call New.
type FS struct {
	base segment.OSFS

	mu struct {
		sync.Mutex
		files map[string]*state // by cleaned path
		rng   *rand.Rand
	}
	partial float64 // probability that a Write triggers a partial writeback
}

var _ segment.FS = (*FS)(nil)

// state is one file's page cache: bytes [0, durable) are on disk (and
// fsynced or written back), pending follows them in memory.
type state struct {
	mu      sync.RWMutex
	id      os.FileInfo // identity of the on-disk file, for os.SameFile
	durable int64
	pending []byte
}

// New returns a lossy FS. partial is the probability (0..1) that a Write
// also writes back a random prefix of the file's pending bytes; seed
// makes that choice reproducible.
func New(seed uint64, partial float64) *FS {
	f := &FS{partial: partial}
	f.mu.files = map[string]*state{}
	f.mu.rng = rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	return f
}

// stateFor returns the page-cache state of the file at path, whose on-disk
// identity is fi; a state of a different file at the same path (replaced
// behind the FS's back, e.g. by a snapshot restore) is dropped.
func (f *FS) stateFor(path string, fi os.FileInfo, trunc bool) *state {
	f.mu.Lock()
	defer f.mu.Unlock()
	st, ok := f.mu.files[path]
	if ok && !trunc && os.SameFile(st.id, fi) {
		return st
	}
	st = &state{id: fi, durable: fi.Size()}
	f.mu.files[path] = st
	return st
}

// OpenFile opens name; the returned file buffers writes until Sync.
func (f *FS) OpenFile(name string, flag int, perm fs.FileMode) (segment.File, error) {
	path := filepath.Clean(name)
	osf, err := os.OpenFile(path, flag, perm)
	if err != nil {
		return nil, err
	}
	fi, err := osf.Stat()
	if err != nil {
		osf.Close()
		return nil, err
	}
	return &file{fs: f, f: osf, st: f.stateFor(path, fi, flag&os.O_TRUNC != 0)}, nil
}

// Remove removes name and forgets its pending bytes.
func (f *FS) Remove(name string) error {
	path := filepath.Clean(name)
	f.mu.Lock()
	delete(f.mu.files, path)
	f.mu.Unlock()
	return os.Remove(path)
}

// Rename renames oldpath to newpath; pending bytes move with the file.
func (f *FS) Rename(oldpath, newpath string) error {
	o, n := filepath.Clean(oldpath), filepath.Clean(newpath)
	if err := os.Rename(o, n); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if st, ok := f.mu.files[o]; ok {
		f.mu.files[n] = st
		delete(f.mu.files, o)
	} else {
		delete(f.mu.files, n)
	}
	return nil
}

// ReadDir lists name.
func (f *FS) ReadDir(name string) ([]fs.DirEntry, error) { return f.base.ReadDir(name) }

// MkdirAll creates path and its parents.
func (f *FS) MkdirAll(path string, perm fs.FileMode) error { return f.base.MkdirAll(path, perm) }

// SyncDir fsyncs the directory dir.
func (f *FS) SyncDir(dir string) error { return f.base.SyncDir(dir) }

// Stat describes name, with its logical (synced + pending) size.
func (f *FS) Stat(name string) (fs.FileInfo, error) {
	path := filepath.Clean(name)
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	st, ok := f.mu.files[path]
	f.mu.Unlock()
	if !ok || !os.SameFile(st.id, fi) {
		return fi, nil
	}
	st.mu.RLock()
	defer st.mu.RUnlock()
	return sized{fi, st.durable + int64(len(st.pending))}, nil
}

// writeback returns how many pending bytes a Write should also flush.
func (f *FS) writeback(pending int) int {
	if f.partial <= 0 || pending == 0 {
		return 0
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.mu.rng.Float64() >= f.partial {
		return 0
	}
	return 1 + f.mu.rng.IntN(pending)
}

// file is an open file whose writes go to its state's pending bytes.
type file struct {
	fs *FS
	f  *os.File
	st *state
}

func (w *file) Write(p []byte) (int, error) {
	st := w.st
	st.mu.Lock()
	defer st.mu.Unlock()
	st.pending = append(st.pending, p...)
	if n := w.fs.writeback(len(st.pending)); n > 0 {
		return len(p), st.flushLocked(w.f, n)
	}
	return len(p), nil
}

// flushLocked writes the first n pending bytes at the end of the on-disk
// file.
func (st *state) flushLocked(f *os.File, n int) error {
	if _, err := f.WriteAt(st.pending[:n], st.durable); err != nil {
		// O_APPEND files refuse WriteAt; they write at the end anyway.
		if _, err := f.Write(st.pending[:n]); err != nil {
			return err
		}
	}
	st.durable += int64(n)
	st.pending = append(st.pending[:0:0], st.pending[n:]...)
	return nil
}

func (w *file) Sync() error {
	st := w.st
	st.mu.Lock()
	defer st.mu.Unlock()
	if len(st.pending) > 0 {
		if err := st.flushLocked(w.f, len(st.pending)); err != nil {
			return err
		}
	}
	return w.f.Sync()
}

func (w *file) ReadAt(p []byte, off int64) (int, error) {
	st := w.st
	st.mu.RLock()
	defer st.mu.RUnlock()
	n := 0
	if off < st.durable {
		m := min(int64(len(p)), st.durable-off)
		k, err := w.f.ReadAt(p[:m], off)
		n += k
		if err != nil && err != io.EOF {
			return n, err
		}
		if int64(k) < m {
			return n, io.EOF
		}
	}
	if n < len(p) {
		rel := off + int64(n) - st.durable
		if rel >= int64(len(st.pending)) {
			return n, io.EOF
		}
		n += copy(p[n:], st.pending[rel:])
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (w *file) Truncate(size int64) error {
	st := w.st
	st.mu.Lock()
	defer st.mu.Unlock()
	if size >= st.durable {
		if rel := size - st.durable; rel < int64(len(st.pending)) {
			st.pending = st.pending[:rel]
		}
		return nil
	}
	st.pending = nil
	st.durable = size
	return w.f.Truncate(size)
}

func (w *file) Stat() (fs.FileInfo, error) {
	fi, err := w.f.Stat()
	if err != nil {
		return nil, err
	}
	st := w.st
	st.mu.RLock()
	defer st.mu.RUnlock()
	return sized{fi, st.durable + int64(len(st.pending))}, nil
}

func (w *file) Close() error { return w.f.Close() }

// sized overrides a FileInfo's size with the logical size.
type sized struct {
	fs.FileInfo
	size int64
}

func (s sized) Size() int64 { return s.size }
