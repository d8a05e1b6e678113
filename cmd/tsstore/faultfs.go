//go:build faultfs

package main

import (
	"os"
	"strconv"

	"github.com/tsstore/tsstore/internal/faultfs"
)

// Built with -tags faultfs (only by the jepsen harness), serve keeps the
// segment log's and the Raft log's (raft-wal) unsynced writes in memory, so a SIGKILL loses them like a
// power cut. FAULTFS_SEED seeds the writeback choices; FAULTFS_PARTIAL is
// the probability (0..1, default 0.05) that a write also flushes a random
// prefix of the unsynced bytes, which can leave a torn batch on disk.
func init() {
	seed, _ := strconv.ParseUint(os.Getenv("FAULTFS_SEED"), 10, 64)
	partial := 0.05
	if v, err := strconv.ParseFloat(os.Getenv("FAULTFS_PARTIAL"), 64); err == nil {
		partial = v
	}
	segmentFS = faultfs.New(seed, partial)
	raftLogFS = faultfs.NewWALFS(seed, partial)
}
