package client

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tsstore/tsstore/proto/tsstorev1"
	"github.com/tsstore/tsstore/record"
)

// Client talks to a tsstore cluster. It is safe for concurrent use.
type Client struct {
	cfg   Config
	seeds []string  // cfg.Addrs, the rotation order
	def   *Producer // used by Client.Append

	stats struct {
		resumes, slowConsumer atomic.Uint64 // see Stats
	}

	mu struct {
		sync.Mutex
		closed bool
		nodes  map[string]*node // by API address; seeds and learned leaders
		leader string           // API address of the leader; "" if unknown
		cursor int              // index into seeds of the node to try next
		// appended is 1 + the highest offset this client has appended
		// (0: none); local reads wait for it (read-your-writes).
		appended uint64
	}
}

// maxReadMessageBytes bounds one received message: the largest record
// batch plus room for the message's other fields.
const maxReadMessageBytes = record.MaxBatchSize + 1<<20

// node is one lazily connected gRPC channel.
type node struct {
	addr   string
	conn   *grpc.ClientConn
	api    tsstorev1.EventStoreClient
	stream streamSlot // the appends' shared AppendStream (append_stream.go)
}

// New returns a Client for the nodes in cfg.Addrs. Connections are made
// lazily, on first use, so New succeeds even if no node is up yet.
func New(cfg Config) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c := &Client{cfg: cfg, seeds: append([]string(nil), cfg.Addrs...)}
	c.mu.nodes = make(map[string]*node)
	c.mu.cursor = rand.IntN(len(c.seeds)) // spread clients over the nodes
	for _, a := range c.seeds {
		if _, err := c.nodeLocked(a); err != nil {
			c.Close()
			return nil, err
		}
	}
	c.def = c.NewProducer("")
	return c, nil
}

// Close closes every connection. Calls in flight fail with codes.Canceled;
// later calls return ErrClosed.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.mu.closed {
		return nil
	}
	c.mu.closed = true
	var errs []error
	for _, n := range c.mu.nodes {
		n.stream.close()
		errs = append(errs, n.conn.Close())
	}
	return errors.Join(errs...)
}

// nodeLocked returns the node for addr, creating its channel if needed.
func (c *Client) nodeLocked(addr string) (*node, error) {
	if n, ok := c.mu.nodes[addr]; ok {
		return n, nil
	}
	opts := []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
		Backoff: backoff.Config{
			BaseDelay:  c.cfg.RetryBackoff,
			Multiplier: 1.6,
			Jitter:     0.2,
			MaxDelay:   c.cfg.MaxRetryBackoff,
		},
		MinConnectTimeout: c.cfg.DialTimeout,
	}),
		// A read message carries whole record batches, and a batch may be
		// as large as one append entry (many MiB); gRPC's default 4 MiB
		// receive limit would fail reading a log written by a batching
		// producer.
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxReadMessageBytes)),
	}
	opts = append(opts, c.cfg.DialOptions...)
	opts = append(opts, c.cfg.securityOptions()...)
	conn, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return nil, fmt.Errorf("client: node %s: %w", addr, err)
	}
	n := &node{addr: addr, conn: conn, api: tsstorev1.NewEventStoreClient(conn)}
	c.mu.nodes[addr] = n
	return n, nil
}

// pick returns the node to try next: the leader if wanted and known,
// otherwise the seed at the rotation cursor.
func (c *Client) pick(wantLeader bool) (*node, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.mu.closed {
		return nil, ErrClosed
	}
	addr := c.seeds[c.mu.cursor%len(c.seeds)]
	if wantLeader && c.mu.leader != "" {
		addr = c.mu.leader
	}
	return c.nodeLocked(addr)
}

// failed records that an attempt on addr failed: forget it as leader and
// move the rotation past it. A NO_LEADER error may name a new leader.
func (c *Client) failed(addr string, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.mu.leader == addr {
		c.mu.leader = ""
	}
	if c.seeds[c.mu.cursor%len(c.seeds)] == addr {
		c.mu.cursor = (c.mu.cursor + 1) % len(c.seeds)
	}
	if hint := leaderHint(err); hint != "" && hint != addr {
		c.mu.leader = hint
	}
}

func (c *Client) setLeader(addr string) {
	c.mu.Lock()
	c.mu.leader = addr
	c.mu.Unlock()
}

// leaderNode returns the node appends should go to. If the leader is not
// known it asks the rotation node's Status. When no leader is known, or the
// advertised one is avoid (it just failed), it returns the rotation node,
// which forwards appends to the leader itself.
func (c *Client) leaderNode(ctx context.Context, avoid string) (*node, error) {
	n, err := c.pick(true)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	known := c.mu.leader != ""
	c.mu.Unlock()
	if known {
		return n, nil
	}
	st, err := n.api.Status(ctx, &tsstorev1.StatusRequest{})
	if err != nil {
		return n, err
	}
	switch addr := st.GetLeaderApiAddress(); {
	case st.GetRole() == "leader":
		c.setLeader(n.addr) // the address we reach it by, not the advertised one
		return n, nil
	case addr != "" && addr != avoid:
		c.setLeader(addr)
		return c.pick(true)
	}
	return n, nil
}

// retryable reports whether err from one attempt may succeed on another
// attempt: the node is down or unreachable, has no leader, the attempt's
// own timeout (not the caller's context) expired, or the node's append
// budget was full (OVERLOADED: nothing was written, and the backoff
// between attempts gives it time to drain).
func retryable(ctx context.Context, err error) bool {
	if ctx.Err() != nil {
		return false
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded:
		return true
	case codes.ResourceExhausted:
		return overloaded(err)
	}
	return false
}

// attemptFunc runs one attempt and returns the address it talked to (""
// if it reached no node).
type attemptFunc func(ctx context.Context, avoid string) (addr string, err error)

// call runs attempt until it succeeds, fails with a non-retryable error, or
// MaxRetries retries are spent, pausing with backoff between attempts.
func (c *Client) call(ctx context.Context, attempt attemptFunc) error {
	pause := c.cfg.RetryBackoff
	var avoid string
	// reason is the latest error that says more than a deadline (a
	// refused connection, a TLS handshake failure): reported when the
	// caller's context ends during an attempt that was still waiting.
	var reason error
	for i := 0; ; i++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		actx, cancel := ctx, context.CancelFunc(func() {})
		if c.cfg.RequestTimeout > 0 {
			actx, cancel = context.WithTimeout(ctx, c.cfg.RequestTimeout)
		}
		addr, err := attempt(actx, avoid)
		cancel()
		if err == nil {
			return nil
		}
		if errors.Is(err, ErrClosed) {
			return err
		}
		if addr != "" {
			c.failed(addr, err)
			avoid = addr
		}
		if code := status.Code(err); code != codes.DeadlineExceeded && code != codes.Canceled && !errors.Is(err, context.DeadlineExceeded) {
			reason = err
		}
		if !retryable(ctx, err) || i >= c.cfg.MaxRetries {
			if ctx.Err() != nil {
				if reason != nil && reason != err {
					return fmt.Errorf("%w (last attempt: %w; earlier: %w)", ctx.Err(), fromStatus(err), fromStatus(reason))
				}
				return fmt.Errorf("%w (last attempt: %w)", ctx.Err(), fromStatus(err))
			}
			return fromStatus(err)
		}
		if serr := sleep(ctx, jitter(pause)); serr != nil {
			return fmt.Errorf("%w (last attempt: %w)", serr, fromStatus(err))
		}
		pause = min(2*pause, c.cfg.MaxRetryBackoff)
	}
}

// jitter returns a duration in [d/2, d).
func jitter(d time.Duration) time.Duration {
	if d < 2 {
		return d
	}
	return d/2 + rand.N(d/2)
}

// sleep waits for d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Status returns the status of some reachable node, trying the nodes in
// turn. Its LeaderApiAddress also refreshes the client's leader.
func (c *Client) Status(ctx context.Context) (*tsstorev1.StatusResponse, error) {
	var resp *tsstorev1.StatusResponse
	var from string
	err := c.call(ctx, func(ctx context.Context, _ string) (string, error) {
		n, err := c.pick(false)
		if err != nil {
			return "", err
		}
		from = n.addr
		resp, err = n.api.Status(ctx, &tsstorev1.StatusRequest{})
		return n.addr, err
	})
	if err != nil {
		return nil, err
	}
	switch {
	case resp.GetRole() == "leader":
		c.setLeader(from)
	case resp.GetLeaderApiAddress() != "":
		c.setLeader(resp.GetLeaderApiAddress())
	}
	return resp, nil
}

// NodeStatus returns the status of the node at addr (one attempt, bounded
// by RequestTimeout). addr need not be in Config.Addrs.
func (c *Client) NodeStatus(ctx context.Context, addr string) (*tsstorev1.StatusResponse, error) {
	c.mu.Lock()
	if c.mu.closed {
		c.mu.Unlock()
		return nil, ErrClosed
	}
	n, err := c.nodeLocked(addr)
	c.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if c.cfg.RequestTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.cfg.RequestTimeout)
		defer cancel()
	}
	resp, err := n.api.Status(ctx, &tsstorev1.StatusRequest{})
	if err != nil {
		return nil, fromStatus(err)
	}
	return resp, nil
}

// noteAppended records that offsets up to last exist, for read-your-writes.
func (c *Client) noteAppended(last uint64) {
	c.mu.Lock()
	c.mu.appended = max(c.mu.appended, last+1)
	c.mu.Unlock()
}

// minNextOffset is the min_next_offset local reads use by default.
func (c *Client) minNextOffset() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mu.appended
}
