package server

import (
	"context"

	"github.com/hashicorp/raft"
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
