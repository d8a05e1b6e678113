package server

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"time"

	"github.com/tsstore/tsstore/fsm"
	pb "github.com/tsstore/tsstore/proto/tsstorev1"
	"github.com/tsstore/tsstore/segment"
)

// repairOpenTimeout bounds the repair a node tries before it starts.
const repairOpenTimeout = 5 * time.Minute

// repairBeforeOpen handles an FSM that cannot open because rebuilding its
// state (the batches after the checkpoint) needs a sealed segment that is
// damaged: Open keeps the segment (segment.Options.OpenDamaged), but the
// state cannot be rolled forward over bytes it cannot read. Raft is not
// running yet, so the peers come from the node table this data directory
// recorded (fsm.KnownNodes); each damaged segment is fetched from the
// first peer whose copy verifies, as the running node's repair does. It
// returns nil when every damaged segment was repaired (the caller opens
// the FSM again), and otherwise cause with what was tried.
func (n *Node) repairBeforeOpen(fcfg fsm.Config, cause error) error {
	first, ok := segment.CorruptSegment(cause)
	if !ok {
		return cause
	}
	l, err := segment.Open(filepath.Join(fcfg.Dir, "log"), fcfg.Segment)
	if err != nil {
		return cause
	}
	defer l.Close()
	bases := []uint64{first}
	for _, d := range l.Damaged() {
		if d.BaseOffset != first {
			bases = append(bases, d.BaseOffset)
		}
	}
	nodes := fsm.KnownNodes(fcfg.Dir)
	ids := make([]string, 0, len(nodes))
	for id, addr := range nodes {
		if id != n.cfg.NodeID && addr != "" {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	if len(ids) == 0 {
		return fmt.Errorf("%w; no peer is known to repair it from", cause)
	}
	// The snapshots that hard-link the damaged file are pointed at the
	// repaired one, so that they do not ship the bad bytes later.
	snaps, err := fsm.NewSnapshotStore(filepath.Join(n.cfg.DataDir, "snapshots"), n.cfg.SnapshotRetain, n.logger)
	if err != nil {
		snaps = nil
	}
	pool := newPeerPool(n.peerCreds())
	defer pool.close()
	ctx, cancel := context.WithTimeout(context.Background(), repairOpenTimeout)
	defer cancel()
	n.opening("repairing damaged segments from a peer")
	for _, base := range bases {
		var errs []error
		repaired := false
		for _, id := range ids {
			conn, err := pool.get(nodes[id])
			if err == nil {
				var size int64
				size, err = n.fetchInto(ctx, pb.NewRepairClient(conn), base, l, snaps)
				if err == nil {
					n.metrics.repairs.WithLabelValues(repairRepaired).Inc()
					n.logger.Info("damaged segment repaired with a peer's copy before the start", "segment", segment.FileName(base),
						"from", id, "bytes", size)
					repaired = true
					break
				}
			}
			errs = append(errs, fmt.Errorf("from %s: %w", id, err))
		}
		if !repaired {
			n.metrics.repairs.WithLabelValues(repairFailed).Inc()
			return fmt.Errorf("%w; repairing %s from a peer before the start failed (docs/operations.md, Repairing damaged segments): %w",
				cause, segment.FileName(base), errors.Join(errs...))
		}
	}
	return nil
}
