package server

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	pb "github.com/tsstore/tsstore/proto/tsstorev1"
)

// Health checking (grpc.health.v1). The node reports one status under two
// service names, "" (the whole server) and "tsstore.v1.EventStore":
//
//   - NOT_SERVING from start until the node knows a leader and has caught
//     up: its applied index has reached the commit index the leader gave
//     it through ReadIndex (a leader: once its term's barrier has applied);
//   - SERVING from then on;
//   - NOT_SERVING again once no leader has been known for longer than the
//     election timeout (the node then catches up again before serving), for
//     good once the FSM has failed, and from the first step of Close.
//
// watchHealth drives it from Raft's leader and state observations and the
// FSM's applied-entry notifications; a ticker at half the election timeout
// is the fallback for what has no notification (the leader's barrier) and
// times the leaderless period.

// healthServices are the service names the health status is reported for.
var healthServices = []string{"", pb.EventStore_ServiceDesc.ServiceName}

// liveStale is how long the health loop may go without a pass before Live
// reports the node stuck. The loop passes at least every election timeout
// / 2; a catch-up ReadIndex call blocks it for at most a few seconds.
const liveStale = 15 * time.Second

// nodeHealth is the node's health state. Its zero value is ready to use
// (the gRPC health server is created by registerHealth).
type nodeHealth struct {
	srv *health.Server
	// failed is set when the FSM has stopped applying (Node.setFatal).
	failed atomic.Bool
	// beat is when the health loop last ran, unix nanoseconds.
	beat atomic.Int64
	mu   struct {
		sync.Mutex
		serving bool
		closing bool
		reason  string
		changed chan struct{} // closed and replaced when serving flips
	}
}

// registerHealth registers the health service on the node's gRPC server,
// with every service NOT_SERVING until watchHealth says otherwise.
func (n *Node) registerHealth() {
	n.health.srv = health.NewServer()
	n.health.mu.Lock()
	n.health.mu.reason = "starting"
	n.health.mu.Unlock()
	for _, s := range healthServices {
		n.health.srv.SetServingStatus(s, healthpb.HealthCheckResponse_NOT_SERVING)
	}
	healthpb.RegisterHealthServer(n.grpc, &healthService{Server: n.health.srv, n: n})
}

// Health reports whether the node is SERVING and, if not, why.
func (n *Node) Health() (serving bool, reason string) {
	n.health.mu.Lock()
	defer n.health.mu.Unlock()
	return n.health.mu.serving, n.health.mu.reason
}

// HealthChanged returns a channel that is closed the next time the node
// goes SERVING or NOT_SERVING, or starts shutting down (otherwise the
// reason alone changing does not close it). Take it before calling
// Health, then wait on it, to miss nothing.
func (n *Node) HealthChanged() <-chan struct{} {
	n.health.mu.Lock()
	defer n.health.mu.Unlock()
	return n.health.changedLocked()
}

// Live reports whether the node can still make progress: its FSM has not
// failed and its health loop is running. It says nothing about quorum: a
// node cut off from its peers is live but not serving. The serve command
// pings the systemd watchdog only while Live returns nil.
func (n *Node) Live() error {
	if n.health.failed.Load() {
		return errors.New("fsm stopped applying; the node must restart")
	}
	if b := n.health.beat.Load(); b != 0 {
		if d := time.Since(time.Unix(0, b)); d > liveStale {
			return fmt.Errorf("health loop has not run for %v", d.Round(time.Second))
		}
	}
	return nil
}

func (h *nodeHealth) changedLocked() chan struct{} {
	if h.mu.changed == nil {
		h.mu.changed = make(chan struct{})
	}
	return h.mu.changed
}

// set records a status; it reports whether serving flipped. After
// shutdown nothing changes any more.
func (h *nodeHealth) set(serving bool, reason string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.setLocked(serving, reason)
}

func (h *nodeHealth) setLocked(serving bool, reason string) bool {
	if h.mu.closing {
		return false
	}
	flipped := h.mu.serving != serving
	h.mu.serving, h.mu.reason = serving, reason
	if !flipped {
		return false
	}
	close(h.changedLocked())
	h.mu.changed = make(chan struct{})
	if h.srv != nil {
		st := healthpb.HealthCheckResponse_NOT_SERVING
		if serving {
			st = healthpb.HealthCheckResponse_SERVING
		}
		for _, s := range healthServices {
			h.srv.SetServingStatus(s, st)
		}
	}
	return true
}

// shutdown is the first step of Close: every service goes NOT_SERVING for
// good, so that load balancers and clients move away before the API stops.
func (h *nodeHealth) shutdown() {
	// One critical section: the health loop must not set SERVING again
	// between the last status and closing (a watcher saw SERVING during
	// Close under load).
	h.mu.Lock()
	if !h.setLocked(false, "shutting down") {
		// Already not serving (no leader, say): the reason still changes
		// for good, so wake whoever waits for a change.
		h.mu.reason = "shutting down"
		close(h.changedLocked())
		h.mu.changed = make(chan struct{})
	}
	h.mu.closing = true
	h.mu.Unlock()
	if h.srv != nil {
		h.srv.Shutdown()
	}
}

// healthWatch is watchHealth's state; only that goroutine touches it.
type healthWatch struct {
	n *Node
	// leaderlessSince is when the node last lost its leader; zero while
	// one is known.
	leaderlessSince time.Time
	// target is the commit index to reach before serving, once learned.
	target     uint64
	haveTarget bool
	// nextTry holds back a failed ReadIndex until the next tick.
	nextTry time.Time
	serving bool
}

// watchHealth keeps the health status up to date; started by New.
func (n *Node) watchHealth() {
	obsCh := make(chan raft.Observation, 8)
	obs := raft.NewObserver(obsCh, false, func(o *raft.Observation) bool {
		switch o.Data.(type) {
		case raft.LeaderObservation, raft.RaftState:
			return true
		}
		return false
	})
	n.raft.RegisterObserver(obs)
	defer n.raft.DeregisterObserver(obs)
	tick := time.NewTicker(max(n.cfg.ElectionTimeout/2, 10*time.Millisecond))
	defer tick.Stop()
	w := &healthWatch{n: n, leaderlessSince: time.Now()}
	for {
		changed := n.proc.Changed()
		if !w.step(time.Now()) {
			changed = nil // wake on applied entries only while catching up
		}
		select {
		case <-obsCh:
		case <-changed:
		case <-tick.C:
		case <-n.shutdown:
			return
		}
	}
}

// step re-evaluates the health status. It reports whether the node is
// waiting for its applied index to reach the catch-up target.
func (w *healthWatch) step(now time.Time) (waitApplied bool) {
	n := w.n
	n.health.beat.Store(now.UnixNano())
	if n.health.failed.Load() {
		w.setServing(false, "fsm stopped applying; the node must restart")
		return false
	}
	if n.raft.State() == raft.Shutdown {
		w.setServing(false, "raft is shut down")
		return false
	}
	if p := n.diskProblem(); p != "" {
		w.setServing(false, p)
		return false
	}
	_, leader := n.raft.LeaderWithID()
	if leader == "" {
		if w.leaderlessSince.IsZero() {
			w.leaderlessSince = now
		}
		gone := now.Sub(w.leaderlessSince)
		if w.serving && gone <= n.cfg.ElectionTimeout {
			return false // an election may well be under way
		}
		// Catch up again under the next leader: this node may have missed
		// entries while it was cut off.
		w.haveTarget = false
		w.setServing(false, fmt.Sprintf("no leader since %s", w.leaderlessSince.Format(time.RFC3339)))
		return false
	}
	w.leaderlessSince = time.Time{}
	if w.serving {
		return false
	}
	if !w.haveTarget {
		if now.Before(w.nextTry) {
			return false
		}
		ctx, cancel := context.WithTimeout(context.Background(), max(2*n.cfg.ElectionTimeout, time.Second))
		idx, err := n.readIndex(ctx)
		cancel()
		if err != nil {
			w.nextTry = now.Add(n.cfg.ElectionTimeout / 2)
			w.setServing(false, fmt.Sprintf("leader %s; learning its commit index: %v", leader, err))
			return false
		}
		w.target, w.haveTarget = idx, true
	}
	if applied := n.proc.AppliedIndex(); applied < w.target {
		w.setServing(false, fmt.Sprintf("catching up: applied %d of %d", applied, w.target))
		return true
	}
	w.setServing(true, "")
	return false
}

func (w *healthWatch) setServing(serving bool, reason string) {
	w.serving = serving
	if w.n.health.set(serving, reason) {
		if serving {
			w.n.logger.Info("health: serving", "applied", w.n.proc.AppliedIndex())
		} else {
			w.n.logger.Warn("health: not serving", "reason", reason)
		}
	}
}

// healthService is the gRPC health service. Watch streams end when the
// node starts draining, so that they never hold up GracefulStop.
type healthService struct {
	*health.Server
	n *Node
}

func (s *healthService) Watch(in *healthpb.HealthCheckRequest, stream healthpb.Health_WatchServer) error {
	ctx, cancel := context.WithCancel(stream.Context())
	ended := make(chan struct{})
	defer func() {
		cancel()
		<-ended
	}()
	// Owned by this handler: it returns once ctx ends, which the deferred
	// cancel guarantees before the handler returns.
	go func() {
		defer close(ended)
		select {
		case <-s.n.draining:
			cancel()
		case <-ctx.Done():
		}
	}()
	err := s.Server.Watch(in, &watchStream{Health_WatchServer: stream, ctx: ctx})
	select {
	case <-s.n.draining:
		// The final NOT_SERVING may have lost the race with the
		// cancellation; say it again, then end the stream.
		_ = stream.Send(&healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_NOT_SERVING})
		return status.Error(codes.Unavailable, "node is shutting down")
	default:
		return err
	}
}

// watchStream is a Watch stream with a context that also ends on drain.
type watchStream struct {
	healthpb.Health_WatchServer
	ctx context.Context
}

func (w *watchStream) Context() context.Context { return w.ctx }
