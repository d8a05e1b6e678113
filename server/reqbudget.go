package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/tsstore/tsstore/proto/tsstorev1"
)

// Append requests an authenticated client has sent and the node has not
// answered are bounded per client connection (Config.ConnRequestBytes) and
// per node (NodeRequestBytes). What grpc-go allows, and why the bound is
// built this way (docs/design.md, failure table):
//
//   - grpc-go reads a unary request whole before any interceptor runs: as
//     soon as a call's handler goroutine reads the 5-byte message prefix it
//     opens the stream's flow-control window to the message's length (up
//     to grpc.MaxRecvMsgSize), and nothing of ours runs in between. A
//     budget in an interceptor, or in a stats handler (InPayload comes
//     after the read), counts bytes already held.
//   - The connection-level HTTP/2 window bounds nothing held: grpc-go
//     acknowledges connection-level data as it arrives, decoupled from
//     reads. Only a stream's window bounds what a stream whose message the
//     node has not started to read can hold, so the stream window is
//     static (Config.RequestWindowBytes, 64 KiB) instead of grown by BDP
//     estimation up to 16 MiB.
//   - So unary Append is served as a stream (appendDesc): its handler runs
//     before grpc reads the body, and reserves the largest request
//     (max-request-bytes + 1 MiB, grpc's MaxRecvMsgSize) from its
//     connection's and the node's budgets before it reads it, waiting in
//     line up to requestReadWait for them. Once read, the request counts at
//     its real size until it is answered; a request that would take the
//     held bytes past the budget less one largest request (so that one read
//     can always proceed) is refused at once with ResourceExhausted naming
//     the cap, and its bytes are dropped. The unary interceptors run after
//     the read, as for any unary call (same metrics, labels and auth).
//   - AppendStream requests count at their real size from the moment they
//     are read until answered, refused the same way. They are held against
//     the held bytes only (they are in memory already): while unary reads
//     fill the rest of a budget, the count can pass its size, to at most
//     twice the size less one read. The one request an AppendStream is
//     reading cannot be reserved before Recv (an idle stream would hold
//     the reservation for ever); the request gate (reqgate.go) reserves it
//     at its real size once its prefix arrives, and holds back the
//     stream's window until it has. Requests of other methods larger than
//     the stream window pass the same gate.
//
// Reads wait for budget rather than being refused, so a burst of small
// appends on one connection queues for microseconds instead of failing;
// requests already read are refused rather than queued, so large appends
// beyond the budget cost their sender a retry instead of the node memory.

// requestReadWait bounds how long an Append waits for the budget to read
// its request: past it the call is refused (ResourceExhausted) rather
// than left to the client's deadline. Reads wait in line, and the stall
// cut closes a connection whose request body stalls (stallcut.go), so
// only reads queued behind many large ones wait this long.
const requestReadWait = 5 * time.Second

// requestBudget counts the bytes of requests of one connection or of the
// node: reading, the reservations of requests being read; held, the real
// sizes of requests read and not yet answered.
type requestBudget struct {
	mu      sync.Mutex
	size    int64
	reading int64
	held    int64
	// queue holds the reads waiting for room, served in arrival order:
	// with waiters woken together, a well-behaved producer's appends lost
	// the race to the next read of attackers that retry at once
	// (`tsstore bench --workloads x --hostile-big-appenders 20`).
	queue []*readWaiter
	// receiving counts requests whose reads hold both budgets, so grpc
	// reads them, and receivingSince is when it last went from 0 (the
	// stall cut, stallcut.go).
	receiving      int
	receivingSince time.Time
}

// readWaiter is a read waiting for n bytes; ready is closed once they
// were taken for it.
type readWaiter struct {
	n     int64
	ready chan struct{}
}

func newRequestBudget(n int64) *requestBudget {
	return &requestBudget{size: n}
}

// fitsLocked reports whether a read of n bytes fits now.
func (b *requestBudget) fitsLocked(n int64) bool {
	return b.reading+b.held+n <= b.size || b.reading+b.held == 0
}

// startRead counts n bytes as being read, waiting in line until they fit
// beside what is read and held, until ctx ends.
func (b *requestBudget) startRead(ctx context.Context, n int64) error {
	b.mu.Lock()
	if len(b.queue) == 0 && b.fitsLocked(n) {
		b.reading += n
		b.mu.Unlock()
		return nil
	}
	w := &readWaiter{n: n, ready: make(chan struct{})}
	b.queue = append(b.queue, w)
	b.mu.Unlock()
	select {
	case <-w.ready:
		return nil
	case <-ctx.Done():
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	select {
	case <-w.ready: // served meanwhile: give the bytes back
		b.reading -= n
	default:
		b.queue = slices.DeleteFunc(b.queue, func(x *readWaiter) bool { return x == w })
	}
	b.serveLocked()
	return ctx.Err()
}

// tryRead counts n bytes as being read if they fit now and no read
// waits before them.
func (b *requestBudget) tryRead(n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.queue) == 0 && b.fitsLocked(n) {
		b.reading += n
		return true
	}
	return false
}

// serveLocked gives room to the waiting reads, in order, while the first
// fits.
func (b *requestBudget) serveLocked() {
	for len(b.queue) > 0 && b.fitsLocked(b.queue[0].n) {
		w := b.queue[0]
		b.queue = b.queue[1:]
		b.reading += w.n
		close(w.ready)
	}
}

// contended reports whether a read waits for room.
func (b *requestBudget) contended() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.queue) > 0
}

// receive notes that a request of the connection starts (on) or stops
// being received.
func (b *requestBudget) receive(on bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !on {
		b.receiving--
		return
	}
	if b.receiving == 0 {
		b.receivingSince = time.Now()
	}
	b.receiving++
}

// receivingFrom returns since when the connection has had a request
// being received, if it has one.
func (b *requestBudget) receivingFrom() (time.Time, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.receivingSince, b.receiving > 0
}

// readStalled reports whether a connection's budget has had a request
// being received for d before now while its socket delivered nothing
// since lastRead.
func (b *requestBudget) readStalled(now time.Time, d time.Duration, lastRead time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.receiving > 0 && now.Sub(b.receivingSince) >= d && now.Sub(lastRead) >= d
}

// endRead gives back a read's reservation of n bytes.
func (b *requestBudget) endRead(n int64) {
	b.mu.Lock()
	b.reading -= n
	b.serveLocked()
	b.mu.Unlock()
}

// hold counts n bytes of a request read, unless the held bytes would
// then pass the budget less keep (room for one more read); it reports
// whether it did.
func (b *requestBudget) hold(n, keep int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.held > 0 && b.held+n > b.size-keep {
		return false
	}
	b.held += n
	return true
}

// release gives back n held bytes.
func (b *requestBudget) release(n int64) {
	b.mu.Lock()
	b.held -= n
	b.serveLocked()
	b.mu.Unlock()
}

// inUse returns the bytes being read and held.
func (b *requestBudget) inUse() (reading, held int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.reading, b.held
}

// connRequestKey carries a connection's request budget in its calls'
// contexts (connBudgets.TagConn).
type connRequestKey struct{}

// requestCharge is what one request holds of its token's, its
// connection's and the node's request budgets.
type requestCharge struct {
	n *Node
	// levels are the budgets charged, in the order they are taken: the
	// token's (when it has one), the connection's (when grpc tagged it),
	// the node's.
	levels  []chargeLevel
	conn    *requestBudget // the connection's, for the stall cut
	reading int64          // reserved while reading
	held    int64          // the request's size, once read and admitted
	// lateReceive: the request counts as being received (for the stall
	// cut) only from markReceiving, not from its reservation; the
	// request gate marks it when the node opens the stream's window.
	lateReceive bool
	receiving   bool
}

// chargeLevel is one budget of a charge, named for its refusals.
type chargeLevel struct {
	b    *requestBudget
	who  string // "this connection", "node n1", "token t"
	flag string // the flag that sets it
}

func (n *Node) newRequestCharge(ctx context.Context) *requestCharge {
	conn, _ := ctx.Value(connRequestKey{}).(*requestBudget)
	return n.chargeFor(tokenName(ctx), conn)
}

// chargeFor is a charge on the budgets of token (none if "") and conn
// (none if nil), and the node's.
func (n *Node) chargeFor(token string, conn *requestBudget) *requestCharge {
	c := &requestCharge{n: n, conn: conn}
	if b := n.tokenRequests(token); b != nil {
		c.levels = append(c.levels, chargeLevel{b: b, who: "token " + token, flag: "token-request-bytes"})
	}
	if conn != nil {
		c.levels = append(c.levels, chargeLevel{b: conn, who: "this connection", flag: "conn-request-bytes"})
	}
	c.levels = append(c.levels, chargeLevel{b: n.reqBytes, who: "node " + n.cfg.NodeID, flag: "node-request-bytes"})
	return c
}

// tokenRequests returns token's request budget, made on first use; nil
// for no token, or with the per-token budget off.
func (n *Node) tokenRequests(token string) *requestBudget {
	if token == "" || n.cfg.TokenRequestBytes <= 0 {
		return nil
	}
	n.tokenReqMu.Lock()
	defer n.tokenReqMu.Unlock()
	b := n.tokenReq[token]
	if b == nil {
		if n.tokenReq == nil {
			n.tokenReq = map[string]*requestBudget{}
		}
		b = newRequestBudget(n.cfg.TokenRequestBytes)
		n.tokenReq[token] = b
	}
	return b
}

// maxRequestRead is the most grpc reads for one request.
func (n *Node) maxRequestRead() int64 { return int64(n.cfg.MaxRequestBytes) + 1<<20 }

// startRead reserves the largest request before it is read.
func (c *requestCharge) startRead(ctx context.Context) error {
	return c.startReadN(ctx, c.n.maxRequestRead(), requestReadWait)
}

// startReadN reserves n bytes before a request of that size is read
// (the request gate, reqgate.go, knows the size of a streaming call's
// message from its prefix), waiting in line at each budget in turn, up
// to wait in all (0: until ctx ends).
func (c *requestCharge) startReadN(ctx context.Context, n int64, wait time.Duration) error {
	wctx, cancel := context.WithCancel(ctx)
	if wait > 0 {
		wctx, cancel = context.WithTimeout(ctx, wait)
	}
	defer cancel()
	for i, l := range c.levels {
		if err := l.b.startRead(wctx, n); err != nil {
			for _, taken := range c.levels[:i] {
				taken.b.endRead(n)
			}
			return c.readRefused(ctx, err, l)
		}
	}
	c.startedRead(n)
	return nil
}

// tryReadN reserves n bytes if every budget has room now and nobody
// waits for it.
func (c *requestCharge) tryReadN(n int64) bool {
	for i, l := range c.levels {
		if !l.b.tryRead(n) {
			for _, taken := range c.levels[:i] {
				taken.b.endRead(n)
			}
			return false
		}
	}
	c.startedRead(n)
	return true
}

func (c *requestCharge) startedRead(n int64) {
	c.reading = n
	if !c.lateReceive {
		c.markReceiving()
	}
}

// markReceiving counts the request as being received on its connection
// (the stall cut, stallcut.go) until its read ends.
func (c *requestCharge) markReceiving() {
	if c.conn != nil && c.reading > 0 && !c.receiving {
		c.receiving = true
		c.conn.receive(true)
	}
}

func (c *requestCharge) readRefused(ctx context.Context, err error, l chargeLevel) error {
	if ctx.Err() != nil {
		return status.FromContextError(ctx.Err()).Err()
	}
	reading, held := l.b.inUse()
	c.n.metrics.requestsRefused.WithLabelValues(l.flag).Inc()
	return withReason(codes.ResourceExhausted, pb.ErrorReason_ERROR_REASON_OVERLOADED,
		fmt.Sprintf("%s had no room to read a request for %v: %d bytes of append requests being read and %d read and not yet answered, the cap is %d (%s); retry later",
			l.who, requestReadWait, reading, held, l.b.size, l.flag), map[string]string{"cap": l.flag})
}

// endRead gives back the read's reservation, if any.
func (c *requestCharge) endRead() {
	if c.reading == 0 {
		return
	}
	if c.receiving {
		c.receiving = false
		c.conn.receive(false)
	}
	for _, l := range c.levels {
		l.b.endRead(c.reading)
	}
	c.reading = 0
}

// admit counts the request at its real size, or refuses it
// (ResourceExhausted) if that would pass a cap, and then ends its read:
// in that order, the next read waiting is given room only once the
// request's bytes are counted.
func (c *requestCharge) admit(size int64) error {
	defer c.endRead()
	keep := c.n.maxRequestRead()
	for i, l := range c.levels {
		if !l.b.hold(size, keep) {
			for _, taken := range c.levels[:i] {
				taken.b.release(size)
			}
			return c.holdRefused(size, l)
		}
	}
	c.held = size
	return nil
}

func (c *requestCharge) holdRefused(size int64, l chargeLevel) error {
	_, held := l.b.inUse()
	c.n.metrics.requestsRefused.WithLabelValues(l.flag).Inc()
	return withReason(codes.ResourceExhausted, pb.ErrorReason_ERROR_REASON_OVERLOADED,
		fmt.Sprintf("%s holds %d bytes of append requests read and not yet answered; this one's %d would pass the cap of %d less one largest request, %d (%s); nothing was written, retry later",
			l.who, held, size, l.b.size, c.n.maxRequestRead(), l.flag), map[string]string{"cap": l.flag})
}

// done gives back everything the request holds.
func (c *requestCharge) done() {
	c.endRead()
	if c.held > 0 {
		for _, l := range c.levels {
			l.b.release(c.held)
		}
		c.held = 0
	}
}

// appendDesc is the EventStore service with unary Append served by
// serveAppend as a stream, so that it runs before grpc reads the request
// (see above). On the wire it is the same unary call.
func appendDesc() *grpc.ServiceDesc {
	d := pb.EventStore_ServiceDesc
	d.Methods = slices.DeleteFunc(slices.Clone(d.Methods), func(m grpc.MethodDesc) bool { return m.MethodName == "Append" })
	d.Streams = append(slices.Clone(d.Streams), grpc.StreamDesc{
		StreamName: "Append",
		Handler:    func(srv any, stream grpc.ServerStream) error { return srv.(*service).serveAppend(stream) },
	})
	return &d
}

// serveAppend reads one Append request within the request budgets, runs
// the unary interceptors and Append, and sends the answer. A refusal by
// the budgets goes through the unary interceptors too, so that the
// unary metrics count it.
func (s *service) serveAppend(stream grpc.ServerStream) error {
	ctx := stream.Context()
	settle, err := s.n.quotas.admit(ctx, s.n.maxRequestRead()) // the token's quota (quota.go)
	if err != nil {
		return s.unaryAppend(stream, new(pb.AppendRequest), err)
	}
	charge := s.n.newRequestCharge(ctx)
	defer charge.done()
	if err := charge.startRead(ctx); err != nil {
		settle(0)
		return s.unaryAppend(stream, new(pb.AppendRequest), err)
	}
	req := new(pb.AppendRequest)
	if err := stream.RecvMsg(req); err != nil {
		settle(0)
		if errors.Is(err, io.EOF) {
			return status.Error(codes.InvalidArgument, "append call ended without a request")
		}
		return err
	}
	size := int64(proto.Size(req)) + grpcFrameBytes
	refused := charge.admit(size)
	if refused == nil {
		settle(size) // once read: the token's next request need not wait for this one's commit
	} else {
		settle(0)
	}
	return s.unaryAppend(stream, req, refused)
}

// unaryAppend runs the unary interceptors around Append of req, or
// around the refusal refused, and sends the answer.
func (s *service) unaryAppend(stream grpc.ServerStream, req *pb.AppendRequest, refused error) error {
	handler := func(ctx context.Context, req any) (any, error) {
		if refused != nil {
			return nil, refused
		}
		return s.Append(ctx, req.(*pb.AppendRequest))
	}
	ctx := stream.Context()
	var resp any
	var err error
	if chain := s.n.appendChain; chain != nil {
		resp, err = chain(ctx, req, &grpc.UnaryServerInfo{Server: s, FullMethod: pb.EventStore_Append_FullMethodName}, handler)
	} else {
		resp, err = handler(ctx, req)
	}
	if err != nil {
		return err
	}
	return stream.SendMsg(resp)
}

// chainUnary runs ints around a handler, the first outermost, as
// grpc.ChainUnaryInterceptor does.
func chainUnary(ints []grpc.UnaryServerInterceptor) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		for i := len(ints) - 1; i >= 0; i-- {
			ic, next := ints[i], h
			h = func(ctx context.Context, req any) (any, error) { return ic(ctx, req, info, next) }
		}
		return h(ctx, req)
	}
}

// exceptAppend runs si for every stream but Append, which the unary
// interceptors see (serveAppend).
func exceptAppend(si grpc.StreamServerInterceptor) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		if info.FullMethod == pb.EventStore_Append_FullMethodName {
			return h(srv, ss)
		}
		return si(srv, ss, info, h)
	}
}

// holdStreamRequest counts an AppendStream request of size bytes, read,
// until release; or refuses it (ResourceExhausted) if that would pass a
// cap.
func (n *Node) holdStreamRequest(ctx context.Context, size int64) (release func(), err error) {
	c := n.newRequestCharge(ctx)
	if err := c.admit(size); err != nil {
		return nil, err
	}
	return c.done, nil
}
