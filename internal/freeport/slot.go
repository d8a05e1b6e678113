package freeport

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
)

// slots is how many processes get a share of the range to themselves.
// go test runs GOMAXPROCS packages at once, and a harness or two may run
// beside them.
const slots = 8

var (
	slotOnce sync.Once
	slot     = -1     // this process's slot, or -1 if none was free
	slotFile *os.File // kept open: closing it would drop the lock
)

// processRange is this process's share of the candidate range: the whole
// range if it claimed no slot.
func processRange() (lo, hi int) {
	lo, hi = candidates()
	slotOnce.Do(func() { slot, slotFile = claimSlot(filepath.Join(os.TempDir(), "tsstore-freeport")) })
	if slot < 0 {
		return lo, hi
	}
	share := (hi - lo) / slots
	return lo + slot*share, lo + (slot+1)*share
}

// claimSlot takes the first slot whose lock file no live process holds.
func claimSlot(dir string) (int, *os.File) {
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return -1, nil
	}
	os.Chmod(dir, 0o777|os.ModeSticky) // shared by every user's tests, like /tmp
	for i := range slots {
		f, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("slot-%d", i)), os.O_RDONLY|os.O_CREATE, 0o666) // flock needs no write access
		if err != nil {
			continue
		}
		if tryLock(f) {
			return i, f
		}
		f.Close()
	}
	return -1, nil
}
