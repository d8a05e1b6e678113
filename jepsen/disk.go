package jepsen

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/tsstore/tsstore/internal/proccluster"
)

// DiskSpec gives every node a real, small filesystem of its own (a tmpfs
// mounted on its data directory) that the disk-full nemesis fills, and the
// node's free-space watermarks (server/disk.go).
type DiskSpec struct {
	// Size is each node's filesystem, bytes.
	Size int64
	// MinFree and Resume are the nodes' --min-free-bytes and
	// --disk-resume-bytes.
	MinFree, Resume int64
	// LowMargin is how far below MinFree a "low" fill leaves the free
	// space: the node must refuse, while its writes still succeed.
	LowMargin int64
}

// serveArgs are the watermark flags of every `tsstore serve`.
func (d *DiskSpec) serveArgs() []string {
	return []string{"--min-free-bytes", strconv.FormatInt(d.MinFree, 10),
		"--disk-resume-bytes", strconv.FormatInt(d.Resume, 10)}
}

// fillerName is the file the nemesis fills a node's filesystem with, in
// the root of its data directory (the node never reads that directory's
// root listing).
const fillerName = "jepsen-filler"

// nodeDisks are the mounted filesystems, one per node, by node id.
type nodeDisks struct {
	dirs     map[string]string
	released bool
}

// mountDisks mounts a tmpfs of spec.Size on every node's data directory.
// On error whatever was mounted is unmounted again.
func mountDisks(nodes []*proccluster.Node, spec *DiskSpec) (*nodeDisks, error) {
	d := &nodeDisks{dirs: map[string]string{}}
	for _, n := range nodes {
		if err := os.MkdirAll(n.DataDir, 0o755); err != nil {
			d.release(false)
			return nil, err
		}
		if err := mountTmpfs(n.DataDir, spec.Size); err != nil {
			d.release(false)
			return nil, err
		}
		d.dirs[n.ID] = n.DataDir
	}
	return d, nil
}

// release unmounts every filesystem (the nodes must be stopped). With
// keep, each node's data (the filler left out) is first copied aside and
// put back in place of the mount point, so a failed run's data outlives
// the tmpfs like any scenario's. It may be called more than once; it is a
// no-op on nil.
func (d *nodeDisks) release(keep bool) error {
	if d == nil || d.released {
		return nil
	}
	d.released = true
	var errs []error
	for id, dir := range d.dirs {
		kept, copied := dir+".kept", false
		if keep {
			if err := copyTree(dir, kept); err != nil {
				errs = append(errs, fmt.Errorf("keeping %s's data: %w", id, err))
			} else {
				copied = true
			}
		}
		if err := unmount(dir); err != nil {
			errs = append(errs, err)
			continue
		}
		if copied {
			if err := os.Remove(dir); err != nil {
				errs = append(errs, err)
			} else if err := os.Rename(kept, dir); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// copyTree copies the regular files and directories under src to dst,
// leaving fillers out.
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		to := filepath.Join(dst, rel)
		switch {
		case e.IsDir():
			return os.MkdirAll(to, 0o755)
		case !e.Type().IsRegular() || e.Name() == fillerName:
			return nil
		}
		in, err := os.Open(path)
		if err != nil {
			return err
		}
		defer in.Close()
		out, err := os.Create(to)
		if err != nil {
			return err
		}
		if _, err := io.Copy(out, in); err != nil {
			out.Close()
			return err
		}
		return out.Close()
	})
}

// fillSize is how many bytes to add to a filesystem with free bytes
// available so that what is left is below minFree by margin ("low"), or
// nothing at all ("full").
func fillSize(depth string, free, minFree, margin int64) int64 {
	if depth == "full" {
		return max(free, 0)
	}
	return max(free-(minFree-margin), 0)
}

// fill creates the filler in dir: fallocate'd to leave the free space the
// depth asks for; a full fill then writes 4 KiB blocks until the
// filesystem refuses (ENOSPC), since the node writes concurrently. It
// returns the bytes the filler holds and the free space left after it.
func fill(dir, depth string, spec *DiskSpec) (filled, freeAfter int64, err error) {
	free, _, err := fsFree(dir)
	if err != nil {
		return 0, 0, err
	}
	f, err := os.OpenFile(filepath.Join(dir, fillerName), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	want := fillSize(depth, free, spec.MinFree, spec.LowMargin)
	for want > 0 {
		if err = allocate(f, want); err == nil {
			filled = want
			break
		}
		if !errors.Is(err, syscall.ENOSPC) || depth != "full" {
			return 0, 0, fmt.Errorf("fallocate %d bytes in %s: %w", want, dir, err)
		}
		want -= 1 << 20 // the node took some meanwhile
	}
	if depth == "full" {
		block := make([]byte, 4096)
		for {
			n, werr := f.WriteAt(block, filled)
			filled += int64(n)
			if werr != nil {
				if !errors.Is(werr, syscall.ENOSPC) {
					return filled, 0, werr
				}
				break
			}
		}
	}
	freeAfter, _, err = fsFree(dir)
	return filled, freeAfter, err
}

// removeFiller deletes the filler in dir, if any.
func removeFiller(dir string) error {
	err := os.Remove(filepath.Join(dir, fillerName))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}
