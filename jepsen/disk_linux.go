package jepsen

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// mountTmpfs mounts a tmpfs of size bytes on dir (which must exist).
func mountTmpfs(dir string, size int64) error {
	err := syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, fmt.Sprintf("size=%d,mode=0755", size))
	if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES) {
		return fmt.Errorf("mount -t tmpfs -o size=%d tmpfs %s: %w: the disk-full scenario gives every node a small filesystem of its own "+
			"and needs the privilege to mount one (root, or CAP_SYS_ADMIN); run it as root, as CI does (uid %d here)", size, dir, err, os.Geteuid())
	}
	if err != nil {
		return fmt.Errorf("mount -t tmpfs -o size=%d tmpfs %s: %w", size, dir, err)
	}
	return nil
}

// unmount unmounts dir; if it is busy, it detaches it (the kernel
// unmounts it once the last user is gone).
func unmount(dir string) error {
	err := syscall.Unmount(dir, 0)
	if errors.Is(err, syscall.EBUSY) {
		err = syscall.Unmount(dir, syscall.MNT_DETACH)
	}
	if err != nil {
		return fmt.Errorf("umount %s: %w", dir, err)
	}
	return nil
}

// allocate reserves n bytes for f without writing them (fallocate).
func allocate(f *os.File, n int64) error {
	return syscall.Fallocate(int(f.Fd()), 0, 0, n)
}

// fsFree is the space available to unprivileged writers on the filesystem
// holding dir, as the node reads it (server/disk.go freeBytes), and the
// filesystem's size.
func fsFree(dir string) (free, size int64, err error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, 0, err
	}
	return int64(st.Bavail) * int64(st.Bsize), int64(st.Blocks) * int64(st.Bsize), nil
}
