package server

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/tsstore/tsstore/proto/tsstorev1"
)

// AppendStream serves many appends on one call. It saves what a unary call
// costs per request (HTTP/2 headers, the interceptor chain, a call context)
// for producers that append one small request at a time; the SDK sends the
// appends of all its producers to a node over one such call.
//
// Each request is decided by service.append, the body of unary Append:
// same validation, limits, forwarding on a follower (one unary forwarded
// Append per request), group commit and metrics. The stream as a whole is
// authorized when it opens (role append, auth.go). Requests of one producer
// reach the proposer in sequence order as unary ones do: each request runs
// on its own goroutine, and the proposer's sequence gate and orderBySeq
// put a producer's requests back in order (seqgate.go).
//
// The handler's goroutine owns the call and is its only sender. It starts
// the receive loop, which reads a request only when fewer than
// Config.MaxStreamInflight are read and unanswered (so a client that sends
// faster than the node commits is held back by HTTP/2 flow control), and
// starts one goroutine per request, which hands its answer back through
// out. The call ends when the client closes its side or cancels, or when
// the node drains (Node.Close): then the handler stops taking requests,
// waits for those it has read (their proposals complete; the answers are
// sent while the call lasts), and ends the call with Unavailable, so the
// client re-sends what was never read to another node. The receive loop
// ends when the call does: gRPC cancels the call's context once the
// handler returns.
func (s *service) AppendStream(stream pb.EventStore_AppendStreamServer) error {
	select {
	case <-s.n.draining:
		return errDraining
	default:
	}
	// Each open one costs the node goroutines and buffers while idle: a
	// token's are bounded as its reads are.
	release, err := s.n.tokenAppendStreams.acquire(stream.Context(), s.n.cfg.MaxStreamsPerToken, "AppendStreams", s.n.cfg.NodeID)
	if err != nil {
		return err
	}
	defer release()
	st := newAppendStream(stream.Context(), s.n.cfg.MaxStreamInflight, s.append, s.n.draining, s.n.logger)
	st.hold = func(size int64) (func(), error) { return s.n.holdStreamRequest(stream.Context(), size) }
	st.quota = func() (func(int64), error) { return s.n.quotas.admit(stream.Context(), s.n.maxRequestRead()) }
	go st.receive(stream)
	return st.serve(stream)
}

// errDraining ends an AppendStream when the node shuts down.
var errDraining = status.Error(codes.Unavailable, "node is shutting down; send the remaining appends to another node")

// appendStream is the state of one AppendStream call.
type appendStream struct {
	ctx      context.Context
	decide   func(context.Context, *pb.AppendRequest) (*pb.AppendResponse, error) // service.append
	draining <-chan struct{}                                                      // Node.draining
	logger   *slog.Logger
	// hold, if set, counts a request read against the request budgets
	// until it is answered (reqbudget.go), or refuses it.
	hold func(size int64) (release func(), err error)
	// quota, if set, returns once the call's token may send its next
	// request (its append quota, quota.go), or with the call's end; settle
	// counts the request read at its size (0: none, or refused).
	quota func() (settle func(n int64), err error)
	// slots holds a token per request read and not yet answered (or
	// being read); its capacity is MaxStreamInflight.
	slots chan struct{}
	// out carries answers to the sender; a request holds a slot, so out
	// never fills up.
	out chan *pb.AppendStreamResponse
	// recvEnd gets the receive loop's final error (io.EOF: the client
	// closed its side).
	recvEnd chan error
	reqs    sync.WaitGroup // request goroutines
	mu      struct {
		sync.Mutex
		stopped bool // the handler takes no more requests
	}
}

func newAppendStream(ctx context.Context, maxInflight int, decide func(context.Context, *pb.AppendRequest) (*pb.AppendResponse, error),
	draining <-chan struct{}, logger *slog.Logger) *appendStream {
	return &appendStream{
		ctx: ctx, decide: decide, draining: draining, logger: logger,
		slots:   make(chan struct{}, maxInflight),
		out:     make(chan *pb.AppendStreamResponse, maxInflight),
		recvEnd: make(chan error, 1),
	}
}

// receive reads requests and starts each one, one slot per request.
func (st *appendStream) receive(stream pb.EventStore_AppendStreamServer) {
	for {
		select {
		case st.slots <- struct{}{}:
		case <-st.ctx.Done():
			st.recvEnd <- st.ctx.Err()
			return
		}
		settle := func(int64) {}
		if st.quota != nil {
			var err error
			if settle, err = st.quota(); err != nil {
				<-st.slots
				st.recvEnd <- err
				return
			}
		}
		req, err := stream.Recv()
		if err != nil {
			settle(0)
			st.recvEnd <- err
			return
		}
		size := int64(proto.Size(req)) + grpcFrameBytes
		var release func()
		var refused error
		if st.hold != nil {
			release, refused = st.hold(size)
		}
		if refused != nil {
			settle(0)
		} else {
			settle(size)
		}
		if !st.start(req, release, refused) {
			if release != nil {
				release()
			}
			<-st.slots
			return // the handler stopped: the request is never answered
		}
	}
}

// start runs req on its own goroutine unless the handler has stopped;
// the goroutine calls release (if set) once req is decided, and answers
// refused (if set) instead of deciding it.
func (st *appendStream) start(req *pb.AppendStreamRequest, release func(), refused error) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.mu.stopped {
		return false
	}
	st.reqs.Add(1)
	go st.handle(req, release, refused)
	return true
}

// handle decides one request and hands its answer to the sender.
func (st *appendStream) handle(req *pb.AppendStreamRequest, release func(), refused error) {
	defer st.reqs.Done()
	resp := &pb.AppendStreamResponse{Id: req.GetId()}
	defer func() {
		if release != nil {
			release()
		}
		if p := recover(); p != nil {
			// As the recovery interceptor answers a panic in unary Append.
			st.logger.Error("panic in handler", "panic", p, "method", "AppendStream")
			resp.Result = errorResult(status.Errorf(codes.Internal, "internal error: %v", p))
		}
		st.out <- resp
	}()
	if refused != nil {
		resp.Result = errorResult(refused)
		return
	}
	ar := req.GetAppend()
	if ar == nil {
		ar = &pb.AppendRequest{} // answered as an append with no events
	}
	ctx := st.ctx
	if ms := req.GetTimeoutMs(); ms > 0 { // as grpc-timeout bounds a unary Append
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(ms)*time.Millisecond)
		defer cancel()
	}
	if r, err := st.decide(ctx, ar); err != nil {
		resp.Result = errorResult(err)
	} else {
		resp.Result = &pb.AppendStreamResponse_Append{Append: r}
	}
}

// errorResult carries err as unary Append would return it: its code,
// message and details.
func errorResult(err error) *pb.AppendStreamResponse_Error {
	return &pb.AppendStreamResponse_Error{Error: status.Convert(toStatus(err)).Proto()}
}

// serve sends answers until the call ends, then finishes it.
func (st *appendStream) serve(stream pb.EventStore_AppendStreamServer) error {
	for {
		select {
		case resp := <-st.out:
			if err := stream.Send(resp); err != nil {
				st.finish(nil)
				return err
			}
			<-st.slots
		case err := <-st.recvEnd:
			if errors.Is(err, io.EOF) {
				return st.finish(stream) // the client closed its side: answer the rest
			}
			st.finish(nil)
			return toStatus(err)
		case <-st.draining:
			if err := st.finish(stream); err != nil {
				return err
			}
			return errDraining
		}
	}
}

// finish stops taking requests and waits for those started, sending
// their answers on stream (nil: the call is broken, answers are dropped).
func (st *appendStream) finish(stream pb.EventStore_AppendStreamServer) error {
	st.mu.Lock()
	st.mu.stopped = true
	st.mu.Unlock()
	done := make(chan struct{})
	go func() {
		st.reqs.Wait()
		close(done)
	}()
	var sendErr error
	for {
		select {
		case resp := <-st.out:
			if stream != nil && sendErr == nil {
				sendErr = stream.Send(resp)
			}
		case <-done:
			for {
				select {
				case resp := <-st.out:
					if stream != nil && sendErr == nil {
						sendErr = stream.Send(resp)
					}
				default:
					return sendErr
				}
			}
		}
	}
}
