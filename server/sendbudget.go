package server

import (
	"context"
	"sync"

	"google.golang.org/grpc/stats"
)

// A client that opens Read or Subscribe streams and never reads makes the
// node hold what it sends: once the connection's socket buffers are full,
// every stream has its last message queued in gRPC and the next one
// marshaled and waiting, up to two full messages per stream (measured: 200
// such streams on one connection held ~600 MiB). So the bytes a node has
// handed to gRPC and not yet seen leave are budgeted, per client
// connection (Config.ConnSendBytes) and for the node (NodeSendBytes): a
// stream takes its message's bytes before it reads them from the log, and
// gives them back once the next message of the stream was accepted (the
// earlier one has then left gRPC's stream queue). A stream whose
// connection has no budget left waits, holding nothing, until its
// connection drains; other connections are not held up, except by the
// node-wide bound.

// byteBudget is a counting semaphore of bytes.
type byteBudget struct {
	mu    sync.Mutex
	avail int64
	freed chan struct{} // closed and replaced when bytes are returned
}

func newByteBudget(n int64) *byteBudget {
	return &byteBudget{avail: n, freed: make(chan struct{})}
}

// acquire takes n bytes, waiting for them until ctx ends.
func (b *byteBudget) acquire(ctx context.Context, n int64) error {
	for {
		b.mu.Lock()
		if b.avail >= n {
			b.avail -= n
			b.mu.Unlock()
			return nil
		}
		freed := b.freed
		b.mu.Unlock()
		select {
		case <-freed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// release returns n bytes.
func (b *byteBudget) release(n int64) {
	if n == 0 {
		return
	}
	b.mu.Lock()
	b.avail += n
	close(b.freed)
	b.freed = make(chan struct{})
	b.mu.Unlock()
}

// connBudgetKey carries a connection's budget in its streams' contexts.
type connBudgetKey struct{}

// connBudgets is the stats handler that gives every client connection
// its own send budget.
type connBudgets struct{ bytes int64 }

func (h connBudgets) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return context.WithValue(ctx, connBudgetKey{}, newByteBudget(h.bytes))
}
func (connBudgets) HandleConn(context.Context, stats.ConnStats)                     {}
func (connBudgets) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
func (connBudgets) HandleRPC(context.Context, stats.RPCStats)                       {}

// sendBudget is what one Read or Subscribe stream holds of its
// connection's and the node's budgets: the bytes of its last message,
// which gRPC may still hold, and of the one being prepared.
type sendBudget struct {
	conn, node *byteBudget
	last, cur  int64
}

func (n *Node) newSendBudget(ctx context.Context) *sendBudget {
	conn, _ := ctx.Value(connBudgetKey{}).(*byteBudget)
	return &sendBudget{conn: conn, node: n.sendBytes}
}

// take reserves size bytes for the next message.
func (s *sendBudget) take(ctx context.Context, size int64) error {
	if s.conn != nil {
		if err := s.conn.acquire(ctx, size); err != nil {
			return err
		}
	}
	if err := s.node.acquire(ctx, size); err != nil {
		if s.conn != nil {
			s.conn.release(size)
		}
		return err
	}
	s.cur = size
	return nil
}

// sized gives back what the message did not use of its reservation.
func (s *sendBudget) sized(used int64) {
	if used < s.cur {
		s.give(s.cur - used)
		s.cur = used
	}
}

// sent is called once gRPC accepted the message: the one before it has
// left gRPC's queue for the stream.
func (s *sendBudget) sent() {
	s.give(s.last)
	s.last, s.cur = s.cur, 0
}

// done gives everything back; the stream has ended.
func (s *sendBudget) done() {
	s.give(s.last + s.cur)
	s.last, s.cur = 0, 0
}

func (s *sendBudget) give(n int64) {
	if s.conn != nil {
		s.conn.release(n)
	}
	s.node.release(n)
}
