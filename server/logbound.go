package server

import (
	"errors"
	"time"

	"github.com/hashicorp/raft"
)

// The Raft log is bounded in bytes as well as in entries. hashicorp/raft
// counts only entries (SnapshotThreshold, TrailingLogs), and one entry of
// group commit can be megabytes: with counts alone a 19.2M-event run was
// ~934 entries, never reached the threshold and kept 2.8 GB of log. So,
// every logBoundEvery:
//
//   - TrailingLogs (the entries kept after a snapshot) becomes the number
//     of newest entries that fit in Config.TrailingBytes, capped by
//     Config.TrailingLogs; raft reads it when it compacts its log;
//   - when the log holds more than SnapshotThresholdBytes+TrailingBytes,
//     a snapshot is taken. A snapshot links segment files and copies the
//     state tables, so it is cheap, and taking it often is.
//
// At steady state the log is at most TrailingBytes+SnapshotThresholdBytes
// plus what arrives in one check, whatever the entry size; that also bounds
// what a restart reads (raft reads every entry after the snapshot).
const logBoundEvery = time.Second

// trailingLogs is the TrailingLogs setting for the log as it is now.
func (n *Node) trailingLogs() uint64 {
	return min(n.cfg.TrailingLogs, n.logs.trailingFor(n.cfg.TrailingBytes))
}

// boundRaftLog runs until shutdown, keeping the Raft log within its byte
// bounds.
func (n *Node) boundRaftLog() {
	t := time.NewTicker(logBoundEvery)
	defer t.Stop()
	trailing := n.raft.ReloadableConfig().TrailingLogs
	var lastErr string
	for {
		select {
		case <-n.shutdown:
			return
		case <-t.C:
		}
		if tl := n.trailingLogs(); tl != trailing {
			rc := n.raft.ReloadableConfig()
			rc.TrailingLogs = tl
			if err := n.raft.ReloadConfig(rc); err != nil {
				n.logger.Warn("setting raft trailing logs", "trailing_logs", tl, "error", err)
				continue
			}
			trailing = tl
		}
		if n.logs.usage().Bytes <= n.cfg.SnapshotThresholdBytes+n.cfg.TrailingBytes {
			continue
		}
		err := n.await(nil, n.raft.Snapshot())
		switch {
		case err == nil:
			u := n.logs.usage()
			n.logger.Info("snapshot taken: raft log over its byte threshold",
				"log_bytes_after", u.Bytes, "log_entries_after", u.Entries, "trailing_logs", trailing)
			lastErr = ""
		case errors.Is(err, raft.ErrRaftShutdown):
			return
		case err.Error() != lastErr:
			// Retried every check; logged when the reason changes.
			n.logger.Warn("snapshot for the raft log's byte bound failed; retrying", "error", err)
			lastErr = err.Error()
		}
	}
}
