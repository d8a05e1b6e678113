package server

import (
	"errors"
	"log/slog"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/tsstore/tsstore/internal/hclogslog"
)

// raftLogger is the hclog logger of hashicorp/raft, its transport and
// raft-wal: their lines go to the node's slog logger (one schema, the
// node's attributes and flood limit), with "component" set to name and
// their levels corrected by raftLevel.
func raftLogger(logger *slog.Logger, name string, level hclog.Level) hclog.Logger {
	// hashicorp/raft logs its own node as "node" (a *Raft) on some lines.
	return hclogslog.New(logger, hclogslog.Options{Name: name, Level: level, Remap: raftLevel, Reserved: []string{"node", "component"}})
}

// raftPeerTrouble are hashicorp/raft v1.7.2's ERROR lines about a call to
// one peer that failed (replication.go, raft.go). A peer that is down,
// restarting, partitioned or being removed is part of a cluster's normal
// life and Raft retries with backoff; the quorum, not one peer, is what
// pages an operator (the gRPC health check and tsstore_raft_* metrics
// show it). They are logged at WARN.
var raftPeerTrouble = map[string]bool{
	"failed to heartbeat to":                                    true,
	"failed to appendEntries to":                                true,
	"failed to pipeline appendEntries":                          true,
	"failed to start pipeline replication to":                   true,
	"failed to make requestVote RPC":                            true,
	"failed to send snapshot to":                                true,
	"target does not support pre-vote RPC, treating as granted": true,
}

// raftLevel is the level a Raft line is logged at: INFO for the echoes of
// a clean stop (an error that is the transport or Raft shutting down) and
// for a periodic snapshot with nothing new to capture, WARN for trouble
// with one peer (raftPeerTrouble), else Raft's own.
func raftLevel(level hclog.Level, msg string, args []any) hclog.Level {
	if level < hclog.Warn {
		return level
	}
	for i := 1; i < len(args); i += 2 {
		if err, ok := args[i].(error); ok && (errors.Is(err, raft.ErrTransportShutdown) ||
			errors.Is(err, raft.ErrRaftShutdown) || errors.Is(err, raft.ErrNothingNewToSnapshot)) {
			return hclog.Info
		}
	}
	if level == hclog.Error && raftPeerTrouble[msg] {
		return hclog.Warn
	}
	return level
}
