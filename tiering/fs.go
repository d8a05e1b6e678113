package tiering

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// fsTmpDir is the folder under an FSTarget's root that holds uploads in
// progress; no key may start with it.
const fsTmpDir = ".tiering-tmp"

// FSTarget stores objects as files under a directory: a mounted NFS
// share or another disk. An object is the file root/key; Put writes it
// in root/.tiering-tmp, fsyncs it, hard-links it to its key (link fails
// when the key exists, so nothing is ever overwritten), and fsyncs the
// directory. Head reads the whole file to compute its checksum: the
// check is of the bytes on the share, not of a stored claim.
type FSTarget struct {
	root string
}

// NewFSTarget returns the target rooted at dir, which must exist.
func NewFSTarget(dir string) (*FSTarget, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("tiering: directory %q: %w", dir, err)
	}
	st, err := os.Stat(abs)
	if err != nil {
		return nil, fmt.Errorf("tiering: directory: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("tiering: %s is not a directory", abs)
	}
	if err := os.MkdirAll(filepath.Join(abs, fsTmpDir), 0o755); err != nil {
		return nil, fmt.Errorf("tiering: %w", err)
	}
	return &FSTarget{root: abs}, nil
}

func (t *FSTarget) String() string { return "dir:" + t.root }

func (t *FSTarget) path(key string) (string, error) {
	if err := ValidKey(key); err != nil {
		return "", err
	}
	if key == fsTmpDir || strings.HasPrefix(key, fsTmpDir+"/") {
		return "", fmt.Errorf("%w: %q is the directory target's upload folder", ErrInvalidKey, key)
	}
	return filepath.Join(t.root, filepath.FromSlash(key)), nil
}

// Put implements Target.
func (t *FSTarget) Put(ctx context.Context, key string, body io.ReaderAt, size int64, sum uint32) (ObjectInfo, error) {
	final, err := t.path(key)
	if err != nil {
		return ObjectInfo{}, err
	}
	if err := ctx.Err(); err != nil {
		return ObjectInfo{}, err
	}
	if _, err := os.Lstat(final); err == nil {
		return ObjectInfo{}, fmt.Errorf("%w: %s", ErrExists, key)
	}
	tmp, err := os.CreateTemp(filepath.Join(t.root, fsTmpDir), "put-*")
	if err != nil {
		return ObjectInfo{}, fmt.Errorf("tiering: put %s: %w", key, err)
	}
	defer os.Remove(tmp.Name()) // the link keeps the object; this drops the temporary name
	h := crc32.New(castagnoli)
	n, err := io.Copy(io.MultiWriter(tmp, h), io.NewSectionReader(body, 0, size))
	if err == nil && n != size {
		err = fmt.Errorf("body is %d bytes, not %d: %w", n, size, io.ErrUnexpectedEOF)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return ObjectInfo{}, fmt.Errorf("tiering: put %s: %w", key, err)
	}
	if got := h.Sum32(); got != sum {
		return ObjectInfo{}, fmt.Errorf("%w: put %s: read %08x, expected %08x", ErrChecksum, key, got, sum)
	}
	dir := filepath.Dir(final)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return ObjectInfo{}, fmt.Errorf("tiering: put %s: %w", key, err)
	}
	if err := os.Link(tmp.Name(), final); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return ObjectInfo{}, fmt.Errorf("%w: %s", ErrExists, key)
		}
		return ObjectInfo{}, fmt.Errorf("tiering: put %s: %w", key, err)
	}
	// The new name must survive a crash: sync its directory and, for
	// folders MkdirAll may have made, every parent up to the root.
	for d := dir; ; d = filepath.Dir(d) {
		if err := syncDir(d); err != nil {
			return ObjectInfo{}, fmt.Errorf("tiering: put %s: %w", key, err)
		}
		if d == t.root || len(d) <= len(t.root) {
			break
		}
	}
	return ObjectInfo{Key: key, Size: size, Checksum: sum}, nil
}

// Head implements Target: it reads the file to compute its checksum.
func (t *FSTarget) Head(ctx context.Context, key string) (ObjectInfo, error) {
	p, err := t.path(key)
	if err != nil {
		return ObjectInfo{}, err
	}
	f, err := os.Open(p)
	if err != nil {
		return ObjectInfo{}, t.openErr(key, err)
	}
	defer f.Close()
	h := crc32.New(castagnoli)
	n, err := io.Copy(h, ctxReader{ctx, f})
	if err != nil {
		return ObjectInfo{}, fmt.Errorf("tiering: head %s: %w", key, err)
	}
	return ObjectInfo{Key: key, Size: n, Checksum: h.Sum32()}, nil
}

// GetRange implements Target.
func (t *FSTarget) GetRange(ctx context.Context, key string, off, n int64) (io.ReadCloser, error) {
	p, err := t.path(key)
	if err != nil {
		return nil, err
	}
	if off < 0 || n < 0 {
		return nil, fmt.Errorf("tiering: get %s: bad range %d+%d", key, off, n)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, t.openErr(key, err)
	}
	return struct {
		io.Reader
		io.Closer
	}{io.NewSectionReader(f, off, n), f}, nil
}

// Delete implements Target.
func (t *FSTarget) Delete(ctx context.Context, key string) error {
	p, err := t.path(key)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := os.Remove(p); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("tiering: delete %s: %w", key, err)
	}
	if err := syncDir(filepath.Dir(p)); err != nil {
		return fmt.Errorf("tiering: delete %s: %w", key, err)
	}
	return nil
}

// List implements Target. It walks the whole tree and sorts the keys.
func (t *FSTarget) List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error {
	if err := t.present(); err != nil {
		// An empty listing would tell a sweep that nothing is there.
		return fmt.Errorf("tiering: list %q: %w", prefix, err)
	}
	var objs []ObjectInfo
	err := filepath.WalkDir(t.root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(t.root, p)
		if err != nil {
			return err
		}
		key := filepath.ToSlash(rel)
		if d.IsDir() {
			if key == fsTmpDir {
				return filepath.SkipDir
			}
			// Skip folders that cannot hold a key with the prefix.
			if key != "." && !strings.HasPrefix(key+"/", prefix) && !strings.HasPrefix(prefix, key+"/") {
				return filepath.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() || !strings.HasPrefix(key, prefix) {
			return nil
		}
		info, err := d.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil // deleted since the directory was read: not listed, as a store lists
		}
		if err != nil {
			return err
		}
		objs = append(objs, ObjectInfo{Key: key, Size: info.Size()})
		return nil
	})
	if err != nil {
		return fmt.Errorf("tiering: list %q: %w", prefix, err)
	}
	slices.SortFunc(objs, func(a, b ObjectInfo) int { return strings.Compare(a.Key, b.Key) })
	for _, o := range objs {
		if err := fn(o); err != nil {
			return err
		}
	}
	return nil
}

// openErr is the error of opening key's file. A missing file is
// ErrNotFound only while the target itself is there: its upload folder,
// which NewFSTarget made, says the share is mounted. Without it (an NFS
// share not mounted, leaving an empty mount point, or the directory
// gone) every object would look lost, and a read would report data loss
// where the store is merely unavailable: that is an I/O error instead.
func (t *FSTarget) openErr(key string, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		if perr := t.present(); perr != nil {
			return fmt.Errorf("tiering: %s: %w", key, perr)
		}
		return fmt.Errorf("%w: %s in %s", ErrNotFound, key, t)
	}
	return fmt.Errorf("tiering: %s: %w", key, err)
}

// present checks that the target's directory is the one NewFSTarget
// prepared (its upload folder is there).
func (t *FSTarget) present() error {
	st, err := os.Stat(filepath.Join(t.root, fsTmpDir))
	switch {
	case err != nil:
		return fmt.Errorf("the directory target %s is not there (a share not mounted?): %w", t.root, err)
	case !st.IsDir():
		return fmt.Errorf("the directory target %s is not there: %s is not a folder", t.root, fsTmpDir)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// ctxReader stops a long read when its context ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
