package server

import (
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// The send budget (sendbudget.go) bounds what stalled readers make the
// node hold, but not for how long: a client whose connection stops
// reading keeps its share of the node's budget until the kernel gives up
// on the connection (gRPC sets TCP_USER_TIMEOUT to its 20 s keepalive
// timeout). Eight such connections hold the whole node budget, and every
// other Read and Subscribe on the node waits. So while a stream waits for
// the node's budget, a client connection that shows stalled for
// Config.SendStallTimeout is closed, as NATS closes a slow consumer past
// its write deadline: one with a stream whose last message has not left
// gRPC for that long (the stream waits for it before reading the next,
// sendBudget.waitLeft), or one
// whose own budget is spent with none of it back for that long. Its
// streams end Unavailable (the SDK resumes elsewhere or later), and the
// bytes gRPC held for it are freed. A connection that drains, however
// slowly, is never cut, nor is a stalled one while no other reader waits,
// nor one whose streams wait for the node's budget while their own is
// not spent (the reader that waits). The one false positive: a client
// that keeps conn-send-bytes of messages outstanding on one connection,
// all waiting for the node's budget for the whole timeout.

// connTracker keeps the node's accepted API connections by remote
// address, so the stall cut can close the one behind a budget.
type connTracker struct {
	mu    sync.Mutex
	conns map[string]*trackedConn
}

type trackedConn struct {
	*net.TCPConn // keeps SyscallConn: gRPC sets TCP_USER_TIMEOUT through it
	t            *connTracker
	budget       *byteBudget    // set once gRPC tagged the connection
	requests     *requestBudget // likewise (reqbudget.go)
	lastRead     atomic.Int64   // unix nanoseconds of the last read that returned bytes
	readBytes    atomic.Int64   // bytes read from the socket
	// The receive rate over the last whole window of send-stall-timeout,
	// for the trickle cut; only the stall cut's goroutine touches these.
	markAt      time.Time // start of the window being measured
	markBytes   int64     // readBytes at markAt
	windowStart time.Time // start of the last window measured
	windowEnd   time.Time
	windowBytes int64 // bytes read in it
}

func (c *trackedConn) Read(p []byte) (int, error) {
	n, err := c.TCPConn.Read(p)
	if n > 0 {
		c.lastRead.Store(time.Now().UnixNano())
		c.readBytes.Add(int64(n))
	}
	return n, err
}

// sample closes the connection's rate window once it is d long.
func (c *trackedConn) sample(now time.Time, d time.Duration) {
	if c.markAt.IsZero() {
		c.markAt, c.markBytes = now, c.readBytes.Load()
		return
	}
	if now.Sub(c.markAt) < d {
		return
	}
	b := c.readBytes.Load()
	c.windowStart, c.windowEnd, c.windowBytes = c.markAt, now, b-c.markBytes
	c.markAt, c.markBytes = now, b
}

// trickling reports whether the connection has had a request being
// received for the whole of its last rate window, which ended within d
// before now, and received less than minRate bytes per second over it.
func (c *trackedConn) trickling(now time.Time, d time.Duration, minRate int64) bool {
	if minRate <= 0 || c.requests == nil || c.windowEnd.IsZero() || now.Sub(c.windowEnd) > d {
		return false
	}
	since, ok := c.requests.receivingFrom()
	if !ok || since.After(c.windowStart) {
		return false
	}
	return float64(c.windowBytes) < float64(minRate)*c.windowEnd.Sub(c.windowStart).Seconds()
}

func (c *trackedConn) Close() error {
	c.t.mu.Lock()
	if c.t.conns[c.RemoteAddr().String()] == c {
		delete(c.t.conns, c.RemoteAddr().String())
	}
	b := c.budget
	c.t.mu.Unlock()
	err := c.TCPConn.Close()
	if b != nil {
		b.closed() // what gRPC still held for the connection is gone
	}
	return err
}

type trackedListener struct {
	net.Listener
	t *connTracker
}

func (l trackedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return c, err
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c, nil
	}
	// What gRPC's default keepalive sets for an unwrapped connection: a
	// connection whose sent data is not acknowledged for 20 s is reset.
	_ = setUserTimeout(tc, grpcKeepaliveTimeout)
	w := &trackedConn{TCPConn: tc, t: l.t}
	w.lastRead.Store(time.Now().UnixNano())
	l.t.mu.Lock()
	l.t.conns[tc.RemoteAddr().String()] = w
	l.t.mu.Unlock()
	return w, nil
}

func newConnTracker() *connTracker {
	return &connTracker{conns: map[string]*trackedConn{}}
}

// wrap returns l, tracking the connections it accepts.
func (t *connTracker) wrap(l net.Listener) net.Listener {
	return trackedListener{Listener: l, t: t}
}

// tag attaches the send budget gRPC gave the connection from remote, and
// returns its request budget of reqBytes.
func (t *connTracker) tag(remote net.Addr, b *byteBudget, reqBytes int64) *requestBudget {
	if t == nil || remote == nil {
		return newRequestBudget(reqBytes)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	c := t.conns[remote.String()]
	if c == nil {
		return newRequestBudget(reqBytes)
	}
	c.budget = b
	return c.requestBudgetLocked(reqBytes)
}

// requestBudgetLocked returns the connection's request budget of
// reqBytes, made on first use: by gRPC's tag, or by the request gate
// (reqgate.go), which may see the first request before gRPC tags the
// connection. The caller holds t.mu.
func (c *trackedConn) requestBudgetLocked(reqBytes int64) *requestBudget {
	if c.requests == nil {
		c.requests = newRequestBudget(reqBytes)
	}
	return c.requests
}

// requestStalled returns the connections that have had a request being
// read for d with no byte arriving on their socket for as long
// (requestBudget.readStalled), or with fewer than minRate bytes a second
// arriving over their last whole window of d (trackedConn.trickling).
func (t *connTracker) requestStalled(now time.Time, d time.Duration, minRate int64) []*trackedConn {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []*trackedConn
	for _, c := range t.conns {
		if c.requests != nil && (c.requests.readStalled(now, d, time.Unix(0, c.lastRead.Load())) || c.trickling(now, d, minRate)) {
			out = append(out, c)
		}
	}
	return out
}

// sample advances every connection's rate window (trackedConn.sample).
func (t *connTracker) sample(now time.Time, d time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, c := range t.conns {
		c.sample(now, d)
	}
}

// stalled returns the connections whose budget shows them stalled for d
// (byteBudget.stalled).
func (t *connTracker) stalled(now time.Time, d time.Duration, free int64) []*trackedConn {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []*trackedConn
	for _, c := range t.conns {
		if c.budget != nil && c.budget.stalled(now, d, free) {
			out = append(out, c)
		}
	}
	return out
}

// grpcKeepaliveTimeout is gRPC's default server keepalive timeout, which
// it also sets as TCP_USER_TIMEOUT.
const grpcKeepaliveTimeout = 20 * time.Second

// stallCutEvery is how often the stall cut looks.
const stallCutEvery = 250 * time.Millisecond

// cutStalledReaders closes stalled client connections while readers wait
// for the node's send budget (see above), and, the same way, connections
// that hold a request being read with no byte arriving for
// send-stall-timeout, or fewer than request-min-rate bytes a second over
// a whole window of it, while other appends wait for the node's request
// budget (reqbudget.go): a client that sends an Append's headers and
// stalls or trickles its body would otherwise keep the node's reads of
// append requests. It runs until the node shuts down.
func (n *Node) cutStalledReaders() {
	if n.cfg.SendStallTimeout <= 0 {
		return
	}
	t := time.NewTicker(stallCutEvery)
	defer t.Stop()
	var lastLog [2]time.Time
	for {
		select {
		case <-t.C:
		case <-n.shutdown:
			return
		}
		now := time.Now()
		n.conns.sample(now, n.cfg.SendStallTimeout)
		if n.sendBytes.contended() {
			cut := n.conns.stalled(now, n.cfg.SendStallTimeout, int64(n.cfg.ReadMessageBytes))
			n.cutConns(cut, n.metrics.stalledConnsCut, &lastLog[0],
				"closed client connections whose reads stalled while other readers waited for the node's send budget")
		}
		if n.reqBytes.contended() {
			cut := n.conns.requestStalled(now, n.cfg.SendStallTimeout, n.cfg.RequestMinRate)
			n.cutConns(cut, n.metrics.stalledRequestConnsCut, &lastLog[1],
				"closed client connections whose append request being read stalled or trickled (below request-min-rate) while other appends waited for the node's request budget")
		}
	}
}

// cutConns closes cut, counts them in m and logs msg, once a second at
// most: a client that redials and stalls again must not flood the log.
func (n *Node) cutConns(cut []*trackedConn, m prometheus.Counter, lastLog *time.Time, msg string) {
	for _, c := range cut {
		_ = c.Close()
		m.Inc()
	}
	if now := time.Now(); len(cut) > 0 && now.Sub(*lastLog) >= time.Second {
		*lastLog = now
		n.logger.Warn(msg, "connections", len(cut), "first_remote", cut[0].RemoteAddr().String(), "send_stall_timeout", n.cfg.SendStallTimeout.String())
	}
}
