//go:build !linux

package jepsen

import (
	"errors"
	"os"
)

var errNoTmpfs = errors.New("the disk-full scenario mounts a tmpfs per node and runs on Linux only")

func mountTmpfs(dir string, size int64) error { return errNoTmpfs }

func unmount(dir string) error { return errNoTmpfs }

func allocate(f *os.File, n int64) error { return errNoTmpfs }

func fsFree(dir string) (free, size int64, err error) { return 0, 0, errNoTmpfs }
