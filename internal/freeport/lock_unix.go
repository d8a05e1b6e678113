//go:build unix

package freeport

import (
	"os"
	"syscall"
)

// tryLock takes f's exclusive lock without waiting; the kernel drops it
// when the process exits, however it exits.
func tryLock(f *os.File) bool {
	return syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) == nil
}
