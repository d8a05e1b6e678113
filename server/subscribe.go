package server

import (
	"fmt"
	"strconv"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/tsstore/tsstore/proto/tsstorev1"
)

// subscribeHeartbeat is how often a caught-up subscription sends an empty
// message carrying its position, so the client can tell a quiet log from a
// dead connection and its resume token keeps up with filtered-out events.
const subscribeHeartbeat = 5 * time.Second

// Subscribe sends the selected history, then follows the log as entries
// are applied. History and live events come from the same cursor over the
// same log, so there is no gap or duplicate at the switch. Nothing is
// buffered per subscriber beyond the message being sent: the log is the
// buffer, and gRPC flow control holds back a slow reader. A live
// subscriber that falls more than MaxSubscriberLag offsets behind is ended
// with ResourceExhausted/SLOW_CONSUMER and resumes from its last offset.
func (s *service) Subscribe(req *pb.ReadRequest, stream pb.EventStore_SubscribeServer) error {
	n := s.n
	ctx := stream.Context()
	release, err := n.acquireReadStream(ctx)
	if err != nil {
		return err
	}
	defer release()
	n.metrics.subscriptions.Inc()
	defer n.metrics.subscriptions.Dec()
	if req.ToOffset != 0 {
		return invalidArg("subscriptions have no end: to_offset must be 0 (use Read)")
	}
	sel, err := n.newSelection(req)
	if err != nil {
		return err
	}
	if err := n.waitReadable(ctx, req); err != nil {
		return toStatus(err)
	}
	if err := n.resolveStart(sel); err != nil {
		return toStatus(n.noteCorruption(err))
	}
	r := &reader{n: n, sel: sel, m: n.metrics.subscribe, budget: n.newSendBudget(ctx)}
	defer r.budget.done()
	hb := time.NewTicker(subscribeHeartbeat)
	defer hb.Stop()
	live := false
	for {
		changed := n.proc.Changed()
		end := n.proc.NextOffset()
		if sel.from < end {
			if lag := end - sel.from; live && lag > n.cfg.MaxSubscriberLag {
				n.metrics.slowConsumers.Inc()
				return withReason(codes.ResourceExhausted, pb.ErrorReason_ERROR_REASON_SLOW_CONSUMER,
					fmt.Sprintf("subscriber is %d offsets behind the log end (limit %d); resume from offset %d", lag, n.cfg.MaxSubscriberLag, sel.from),
					map[string]string{"lag": strconv.FormatUint(lag, 10)})
			}
			if err := r.send(stream, end, end); err != nil {
				return err
			}
			continue
		}
		live = true
		select {
		case <-changed:
		case <-hb.C:
			if err := stream.Send(&pb.ReadResponse{NextOffset: sel.from, LogNextOffset: end}); err != nil {
				return err
			}
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-n.draining:
			return status.Error(codes.Unavailable, "node is shutting down; resume on another node")
		}
	}
}
