package server

import (
	"context"

	"github.com/hashicorp/raft"

	"github.com/tsstore/tsstore/fsm"
)

// await waits for a raft future, the node's shutdown, or ctx (nil: none).
//
// raft v1.7.2 does not answer every future when it shuts down: committed
// entries queued for its FSM goroutine, barriers and applies among them,
// are dropped with their futures unanswered (runFSM returns on shutdownCh
// without draining fsmMutateCh; re-checked when pinning v1.7.2, and v1.7.3
// is the same). So nothing in the node blocks
// on a future unconditionally. The goroutine below outlives the call only
// for such an orphaned future, and only after shutdown.
func (n *Node) await(ctx context.Context, f raft.Future) error {
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	var ctxDone <-chan struct{}
	if ctx != nil {
		ctxDone = ctx.Done()
	}
	select {
	case err := <-done:
		return err
	case <-n.shutdown:
		return raft.ErrRaftShutdown
	case <-ctxDone:
		return ctx.Err()
	}
}

// applyCommand commits one FSM command on this node, which must be the
// leader, waiting at most Config.CommandTimeout for Raft to take it, and
// returns its Raft index and the FSM's answer to it.
func (n *Node) applyCommand(ctx context.Context, t fsm.CommandType, cmd any) (uint64, error) {
	data, err := fsm.Encode(t, cmd)
	if err != nil {
		return 0, err
	}
	f := n.raft.Apply(data, n.cfg.CommandTimeout)
	if err := n.await(ctx, f); err != nil {
		return 0, err
	}
	if r, ok := f.Response().(*fsm.ApplyResult); ok && r.Err != nil {
		return f.Index(), r.Err
	}
	return f.Index(), nil
}
