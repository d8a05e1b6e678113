package server

import (
	"fmt"
	"sync/atomic"
	"syscall"
	"time"
)

// A full disk is a state, not a hang. Every diskCheckEvery the node reads
// the free space of its data directory's filesystem:
//
//   - below Config.MinFreeBytes it is "low": the leader refuses appends at
//     once (ResourceExhausted, DISK_FULL) instead of letting them reach a
//     disk write that fails (a failed segment write stops the FSM until a
//     restart); the node reports NOT_SERVING with the reason;
//   - it leaves that state once the free space is back above
//     MinFreeBytes + DiskResumeBytes (hysteresis), with no restart.
//
// A failing Raft log write (logStore) also makes the node NOT_SERVING
// until a write succeeds again.
const diskCheckEvery = time.Second

// diskState is the node's view of its disk.
type diskState struct {
	free atomic.Int64 // bytes available to the node; -1 before the first check
	low  atomic.Bool
}

// freeBytes is the space available to unprivileged writers on the
// filesystem holding dir.
func freeBytes(dir string) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}

// checkDisk updates the disk state once.
func (n *Node) checkDisk() {
	stat := freeBytes
	if n.cfg.freeSpace != nil {
		stat = n.cfg.freeSpace
	}
	free, err := stat(n.cfg.DataDir)
	if err != nil {
		n.logger.Warn("reading free disk space", "dir", n.cfg.DataDir, "error", err)
		return
	}
	n.disk.free.Store(free)
	low := n.disk.low.Load()
	switch {
	case !low && free < n.cfg.MinFreeBytes:
		n.disk.low.Store(true)
		n.logger.Error("disk space below the low watermark: appends refused, node not serving",
			"dir", n.cfg.DataDir, "free_bytes", free, "min_free_bytes", n.cfg.MinFreeBytes)
	case low && free >= n.cfg.MinFreeBytes+n.cfg.DiskResumeBytes:
		n.disk.low.Store(false)
		n.logger.Info("disk space back above the watermark: appends accepted again",
			"dir", n.cfg.DataDir, "free_bytes", free)
	}
}

// watchDisk runs checkDisk every diskCheckEvery until shutdown.
func (n *Node) watchDisk() {
	t := time.NewTicker(diskCheckEvery)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			n.checkDisk()
		case <-n.shutdown:
			return
		}
	}
}

// diskProblem says why the node cannot persist, or "" when it can.
func (n *Node) diskProblem() string {
	if n.disk.low.Load() {
		return fmt.Sprintf("disk space low: %d bytes free in %s, below min-free-bytes %d", n.disk.free.Load(), n.cfg.DataDir, n.cfg.MinFreeBytes)
	}
	if err := n.logs.writeError(); err != nil {
		return fmt.Sprintf("raft log writes failing: %v", err)
	}
	return ""
}
