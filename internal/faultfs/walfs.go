package faultfs

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"

	"github.com/hashicorp/raft-wal/fs"
	"github.com/hashicorp/raft-wal/types"
)

// WALFS is the same fault for the Raft log: a raft-wal VFS whose segment
// files keep every WriteAt in the process's memory until Sync, so a
// SIGKILL loses what raft-wal had not fsynced, and, with probability
// partial per write, writes back a random prefix of the oldest pending
// write early (a torn write on disk). Reads see pending writes over the
// file. raft-wal's wal-meta.db is bolt, outside the VFS, and is not
// affected.
type WALFS struct {
	base    *fs.FS
	partial float64
	mu      sync.Mutex
	rng     *rand.Rand
}

var _ types.VFS = (*WALFS)(nil)

// NewWALFS returns a lossy raft-wal VFS (see New for seed and partial).
func NewWALFS(seed uint64, partial float64) *WALFS {
	return &WALFS{base: fs.New(), partial: partial, rng: rand.New(rand.NewPCG(seed^0x5bd1e995, seed))}
}

// ListDir lists dir.
func (w *WALFS) ListDir(dir string) ([]string, error) { return w.base.ListDir(dir) }

// Delete removes a file (fsyncing the directory, as raft-wal's FS does).
func (w *WALFS) Delete(dir, name string) error { return w.base.Delete(dir, name) }

// OpenReader opens a sealed file for reading; nothing is pending in it.
func (w *WALFS) OpenReader(dir, name string) (types.ReadableFile, error) {
	return w.base.OpenReader(dir, name)
}

// Create creates and preallocates a file whose writes are buffered.
func (w *WALFS) Create(dir, name string, size uint64) (types.WritableFile, error) {
	f, err := w.base.Create(dir, name, size)
	if err != nil {
		return nil, err
	}
	return &walFile{fs: w, f: f}, nil
}

// OpenWriter opens a file (the tail at recovery) whose writes are buffered.
func (w *WALFS) OpenWriter(dir, name string) (types.WritableFile, error) {
	f, err := os.OpenFile(filepath.Join(dir, name), os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	return &walFile{fs: w, f: f}, nil
}

func (w *WALFS) chance() (bool, float64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.rng.Float64() < w.partial, w.rng.Float64()
}

type pendingWrite struct {
	off  int64
	data []byte
}

// diskFile is the part of a raft-wal file the wrapper needs.
type diskFile interface {
	WriteAt([]byte, int64) (int, error)
	ReadAt([]byte, int64) (int, error)
	Sync() error
	Close() error
}

type walFile struct {
	fs      *WALFS
	f       diskFile
	mu      sync.Mutex
	pending []pendingWrite
}

// WriteAt keeps the write in memory.
func (f *walFile) WriteAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pending = append(f.pending, pendingWrite{off: off, data: append([]byte(nil), p...)})
	if torn, frac := f.fs.chance(); torn {
		first := f.pending[0]
		n := int(frac * float64(len(first.data)))
		if _, err := f.f.WriteAt(first.data[:n], first.off); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// ReadAt reads the file with the pending writes laid over it.
func (f *walFile) ReadAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, err := f.f.ReadAt(p, off)
	end := off + int64(len(p))
	for _, w := range f.pending {
		wEnd := w.off + int64(len(w.data))
		if w.off >= end || wEnd <= off {
			continue
		}
		lo, hi := max(w.off, off), min(wEnd, end)
		copy(p[lo-off:hi-off], w.data[lo-w.off:hi-w.off])
		if int(hi-off) > n {
			n, err = int(hi-off), nil
		}
	}
	return n, err
}

// Sync writes the pending writes in order and fsyncs.
func (f *walFile) Sync() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for len(f.pending) > 0 {
		w := f.pending[0]
		if _, err := f.f.WriteAt(w.data, w.off); err != nil {
			return err
		}
		f.pending = f.pending[1:]
	}
	return f.f.Sync()
}

// Close closes the file; unsynced writes stay lost with the process, as
// raft-wal never closes a file it has not synced.
func (f *walFile) Close() error { return f.f.Close() }
