package server

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/raft"
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

// votersDisk is, on the leader, the last view of the voters' disks: a
// majority of them unable to persist means an entry cannot commit, so
// appends are refused at once rather than left to time out.
type votersDisk struct {
	mu      sync.Mutex
	problem string // "" while a majority can persist (as of the last probe)
	// otherBad are the problems of the other voters at the last probe,
	// voters how many voters there were: appendDiskProblem counts this
	// node's own disk live, so a node whose disk recovered does not wait
	// for the next probe.
	otherBad []string
	voters   int
	// peers is every other server's last reported problem, by Raft
	// address, "" or absent when it can persist (snapguard.go).
	peers map[raft.ServerAddress]string
}

// appendDiskProblem says why the leader refuses appends, or "": its own
// disk, or a majority of voters that cannot persist.
func (n *Node) appendDiskProblem() string {
	if p := n.diskProblem(); p != "" {
		return p
	}
	n.voters.mu.Lock()
	defer n.voters.mu.Unlock()
	if n.voters.problem == "" || len(n.voters.otherBad) <= n.voters.voters/2 {
		return "" // this node can persist now, and fewer than a majority of the others cannot
	}
	return n.voters.problem
}

// watchVotersDisk runs on every node; while it leads, every
// voterDiskEvery it asks the other voters for their disk state.
func (n *Node) watchVotersDisk() {
	t := time.NewTicker(voterDiskEvery)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-n.shutdown:
			return
		}
		var d diskProbe
		if n.raft.State() == raft.Leader {
			d = n.probeDisks()
		}
		n.voters.mu.Lock()
		changed := d.problem != n.voters.problem
		n.voters.problem, n.voters.peers, n.voters.otherBad, n.voters.voters = d.problem, d.peers, d.otherBad, d.voters
		n.voters.mu.Unlock()
		problem := d.problem
		if changed && problem != "" {
			n.logger.Error("a majority of voters cannot persist: appends refused", "reason", problem)
		} else if changed {
			n.logger.Info("a majority of voters can persist again: appends accepted")
		}
	}
}

const voterDiskEvery = 2 * time.Second

// diskProbe is one round of probeDisks.
type diskProbe struct {
	problem  string // why appends must be refused; "" while a majority of voters can persist
	peers    map[raft.ServerAddress]string
	otherBad []string // the problems of voters other than this node
	voters   int
}

// probeDisks asks every server of the configuration for its disk state.
func (n *Node) probeDisks() diskProbe {
	servers, _, err := n.configuration()
	if err != nil {
		return diskProbe{}
	}
	ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
	defer cancel()
	probes := n.probeAll(ctx, servers)
	peers := make(map[raft.ServerAddress]string, len(servers))
	var bad, otherBad []string
	voters := 0
	for _, s := range servers {
		p := probes[s.ID]
		if s.ID == raft.ServerID(n.cfg.NodeID) {
			p.diskProblem = n.diskProblem()
		}
		peers[s.Address] = p.diskProblem
		if s.Suffrage != raft.Voter {
			continue
		}
		voters++
		if p.diskProblem != "" {
			bad = append(bad, fmt.Sprintf("%s: %s", s.ID, p.diskProblem))
			if s.ID != raft.ServerID(n.cfg.NodeID) {
				otherBad = append(otherBad, p.diskProblem)
			}
		}
	}
	d := diskProbe{peers: peers, otherBad: otherBad, voters: voters}
	if len(bad) > voters/2 {
		slices.Sort(bad)
		d.problem = fmt.Sprintf("%d of %d voters cannot persist (%s)", len(bad), voters, strings.Join(bad, "; "))
	}
	return d
}
