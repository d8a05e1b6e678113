package server

import (
	"context"
	"sync"
	"time"

	"google.golang.org/grpc/stats"
)

// A client that opens Read or Subscribe streams and never reads makes the
// node hold what it sends: once the connection's socket buffers are full,
// every stream has its last message queued in gRPC and the next one
// encoded and waiting in Send, two messages per stream (measured: 200 such
// streams on one connection held ~600 MiB). So the bytes a node has
// handed to gRPC and not yet seen leave are budgeted, per client
// connection (Config.ConnSendBytes) and for the node (NodeSendBytes):
//
//   - a stream takes the read's message size before it reads the log
//     (take), and sets the reservation to the encoded message's real size
//     once it is built (resize): a message holds at least one batch, which
//     may be larger than the message size asked for;
//   - the message is encoded into one pooled buffer before Send and the
//     read buffer goes back to the pool before Send can block
//     (reader.sendMsg), so what the stream holds is gRPC's copy, which the
//     budget counts;
//   - it gets the message's bytes back when gRPC frees that copy, written
//     to the connection or dropped with the stream (sentMsg, codec.go), and
//     reads its next message only then (take): a stalled stream holds one
//     message, not the one queued plus the next waiting in Send.
//
// A stream whose connection has no budget left waits, holding nothing,
// until its connection drains; other connections are not held up, except
// by the node-wide bound.

// byteBudget is a counting semaphore of bytes. A request for more than
// the whole budget waits until all of it is free and then takes it all
// and more: avail goes below zero until it is given back, so one message
// larger than a connection's budget is still sent, alone. Waiters are
// woken together and the first to run wins: a FIFO queue was tried and,
// under the hostile-client bench, made a well-behaved reader wait longer,
// since each of its messages queued again behind every stalled stream
// that asked before it.
type byteBudget struct {
	mu      sync.Mutex
	size    int64
	avail   int64
	waiting int           // acquire calls waiting for bytes
	moved   time.Time     // when bytes were last returned, or first taken of a free budget
	freed   chan struct{} // closed and replaced when bytes are returned
	// sending holds the streams of a connection's budget that are in
	// SendMsg, and since when (the stall cut, stallcut.go).
	sending map[*sendBudget]time.Time
	// lingering holds the messages of a connection's ended streams that
	// gRPC has not freed yet; gone is set once the connection closed.
	lingering map[*sentMsg]struct{}
	gone      bool
}

func newByteBudget(n int64) *byteBudget {
	return &byteBudget{size: n, avail: n, freed: make(chan struct{})}
}

// acquire takes n bytes, waiting for them until ctx ends.
func (b *byteBudget) acquire(ctx context.Context, n int64) error {
	b.mu.Lock()
	for b.avail < min(n, b.size) {
		freed := b.freed
		b.waiting++
		b.mu.Unlock()
		select {
		case <-freed:
		case <-ctx.Done():
			b.mu.Lock()
			b.waiting--
			b.mu.Unlock()
			return ctx.Err()
		}
		b.mu.Lock()
		b.waiting--
	}
	if b.avail == b.size {
		b.moved = time.Now()
	}
	b.avail -= n
	b.mu.Unlock()
	return nil
}

// release returns n bytes.
func (b *byteBudget) release(n int64) {
	if n == 0 {
		return
	}
	b.mu.Lock()
	b.avail += n
	b.moved = time.Now()
	close(b.freed)
	b.freed = make(chan struct{})
	b.mu.Unlock()
}

// contended reports whether an acquire is waiting for bytes.
func (b *byteBudget) contended() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.waiting > 0
}

// stalled reports whether a connection's budget shows it stalled for d
// before now, one of two ways:
//
//   - a stream has been in SendMsg, or waiting for its last message to
//     leave gRPC (sendBudget.waitLeft), for d;
//   - less than free bytes are left, so its own streams cannot send, and
//     none has come back for d.
//
// A connection whose streams wait for the node's budget while holding
// their last message is neither: its own budget is not spent.
func (b *byteBudget) stalled(now time.Time, d time.Duration, free int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.avail < free && now.Sub(b.moved) >= d {
		return true
	}
	for _, since := range b.sending {
		if now.Sub(since) >= d {
			return true
		}
	}
	return false
}

// inSend notes that s is in SendMsg (on) or has returned from it.
func (b *byteBudget) inSend(s *sendBudget, on bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !on {
		delete(b.sending, s)
		return
	}
	if b.sending == nil {
		b.sending = map[*sendBudget]time.Time{}
	}
	b.sending[s] = time.Now()
}

// linger keeps m, of an ended stream, until it leaves or the connection
// closes; false if the connection is already closed.
func (b *byteBudget) linger(m *sentMsg) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.gone {
		return false
	}
	select {
	case <-m.left:
		return true // it left meanwhile: nothing to keep
	default:
	}
	if b.lingering == nil {
		b.lingering = map[*sentMsg]struct{}{}
	}
	b.lingering[m] = struct{}{}
	return true
}

// forget drops m from the lingering messages: it has left.
func (b *byteBudget) forget(m *sentMsg) {
	b.mu.Lock()
	delete(b.lingering, m)
	b.mu.Unlock()
}

// closed gives back the lingering messages of a closed connection: gRPC
// does not free the messages its writer still queued when the connection
// ends.
func (b *byteBudget) closed() {
	b.mu.Lock()
	b.gone = true
	ms := make([]*sentMsg, 0, len(b.lingering))
	for m := range b.lingering {
		ms = append(ms, m)
	}
	b.mu.Unlock()
	for _, m := range ms {
		m.release()
	}
}

// connBudgetKey carries a connection's budget in its streams' contexts.
type connBudgetKey struct{}

// connBudgets is the stats handler that gives every client connection
// its own send and request budgets and registers it for the stall cut (stallcut.go).
type connBudgets struct {
	bytes    int64 // send budget
	reqBytes int64 // request budget (reqbudget.go)
	conns    *connTracker
}

func (h connBudgets) TagConn(ctx context.Context, info *stats.ConnTagInfo) context.Context {
	b := newByteBudget(h.bytes)
	r := h.conns.tag(info.RemoteAddr, b, h.reqBytes)
	ctx = context.WithValue(ctx, connRequestKey{}, r)
	return context.WithValue(ctx, connBudgetKey{}, b)
}
func (connBudgets) HandleConn(context.Context, stats.ConnStats)                     {}
func (connBudgets) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
func (connBudgets) HandleRPC(context.Context, stats.RPCStats)                       {}

// sendBudget is what one Read or Subscribe stream holds of its
// connection's and the node's budgets: the bytes of the message being
// prepared, or of the one gRPC holds, never both.
type sendBudget struct {
	conn, node *byteBudget
	cur        int64    // reserved for the message being prepared
	last       *sentMsg // the message last handed to gRPC, until it has left
}

// sentMsg is a message handed to gRPC. Its bytes are given back once gRPC
// has freed its encoding (the codec's tracked encoding, codec.go): written
// to the connection, or dropped with the stream; or, for a stream that
// ended first, when its connection closes (byteBudget.linger).
type sentMsg struct {
	s    *sendBudget
	size int64
	left chan struct{}
	once sync.Once
}

// release gives the message's bytes back, once.
func (m *sentMsg) release() {
	m.once.Do(func() {
		m.s.give(m.size)
		close(m.left) // before forget: linger then sees it left
		if m.s.conn != nil {
			m.s.conn.forget(m)
		}
	})
}

func (n *Node) newSendBudget(ctx context.Context) *sendBudget {
	conn, _ := ctx.Value(connBudgetKey{}).(*byteBudget)
	return &sendBudget{conn: conn, node: n.sendBytes}
}

// take reserves size bytes for the next message, before it is read, once
// the message before it has left gRPC: a stream whose client stalls so
// holds one message, in gRPC's hands, and waits holding nothing else.
func (s *sendBudget) take(ctx context.Context, size int64) error {
	if err := s.waitLeft(ctx); err != nil {
		return err
	}
	if err := s.acquire(ctx, size); err != nil {
		return err
	}
	s.cur = size
	return nil
}

// waitLeft waits until the last message sent has left gRPC. The wait
// counts as a send for the stall cut (stallcut.go).
func (s *sendBudget) waitLeft(ctx context.Context) error {
	if s.last == nil {
		return nil
	}
	select {
	case <-s.last.left:
		s.last = nil
		return nil
	default:
	}
	s.sending(true)
	defer s.sending(false)
	select {
	case <-s.last.left:
		s.last = nil
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// resize sets the next message's reservation to its real size, once it is
// known: it gives back what the message does not use, or waits for what
// it needs beyond the reservation (a message holds at least one batch,
// which can be larger than the read's message size).
func (s *sendBudget) resize(ctx context.Context, size int64) error {
	if size <= s.cur {
		s.give(s.cur - size)
		s.cur = size
		return nil
	}
	if err := s.acquire(ctx, size-s.cur); err != nil {
		return err
	}
	s.cur = size
	return nil
}

// handOff moves the next message's reservation to the message about to
// be sent, which gives it back once it has left gRPC (sentMsg.release).
func (s *sendBudget) handOff() *sentMsg {
	m := &sentMsg{s: s, size: s.cur, left: make(chan struct{})}
	s.cur, s.last = 0, m
	return m
}

// sending is called around SendMsg, for the stall cut.
func (s *sendBudget) sending(on bool) {
	if s.conn != nil {
		s.conn.inSend(s, on)
	}
}

// skip gives back the next message's reservation: there is nothing to send.
func (s *sendBudget) skip() {
	s.give(s.cur)
	s.cur = 0
}

func (s *sendBudget) acquire(ctx context.Context, n int64) error {
	if s.conn != nil {
		if err := s.conn.acquire(ctx, n); err != nil {
			return err
		}
	}
	if err := s.node.acquire(ctx, n); err != nil {
		if s.conn != nil {
			s.conn.release(n)
		}
		return err
	}
	return nil
}

// done gives back the reservation; the stream has ended. A message gRPC
// still holds keeps its bytes until it leaves or its connection closes:
// the stream's end does not free it.
func (s *sendBudget) done() {
	s.give(s.cur)
	s.cur = 0
	if m := s.last; m != nil {
		s.last = nil
		if s.conn == nil || !s.conn.linger(m) {
			m.release()
		}
	}
}

func (s *sendBudget) give(n int64) {
	if s.conn != nil {
		s.conn.release(n)
	}
	s.node.release(n)
}
