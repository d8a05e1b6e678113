package client

import (
	"context"
	"errors"
	"io"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tsstore/tsstore/proto/tsstorev1"
)

// Appends over AppendStream.
//
// A producer's append goes to a node over the client's one AppendStream
// call to that node, opened on first use and shared by every Producer and
// AsyncProducer of the client; requests carry an id and the answers, which
// come in any order, are matched to them by it. The stream is only a
// transport: each append is still one attempt of Producer.send, with the
// same retries, leader tracking, producer sequence and in-doubt rule as a
// unary Append, and the server decides it exactly as a unary Append.
//
//   - When the stream breaks, every append awaiting its answer on it fails
//     with Unavailable: its outcome is unknown, so the producer retries it
//     with the same sequence (the server answers a retry of a committed
//     append with its offsets). The next append opens a new stream.
//   - A node that answers Unimplemented (a server older than AppendStream)
//     gets unary Appends for streamReprobe; the appends that were on the
//     stream go unary at once, since the node never read them.
//   - Unauthenticated and PermissionDenied end the stream when it opens,
//     before the node reads any append: they are returned as they are.
//   - An append larger than streamMaxBytes goes unary: it would hold the
//     small appends behind it on the shared stream, and one refused for its
//     size would end the stream for all of them.
//   - Config.UnaryAppend turns the stream off.

// streamMaxBytes is the largest append (its encoded size, in bytes) sent
// over the stream; streamReprobe is how long a node that lacks
// AppendStream gets unary Appends before the stream is tried again.
const (
	streamMaxBytes = 1 << 20
	streamReprobe  = time.Minute
)

// errStreamUnsupported answers the appends on a stream the node does not
// serve; they are then sent unary.
var errStreamUnsupported = errors.New("client: node does not serve AppendStream")

// appendTo sends one append to n: over n's AppendStream, or unary.
func (c *Client) appendTo(ctx context.Context, n *node, req *tsstorev1.AppendRequest) (*tsstorev1.AppendResponse, error) {
	if c.cfg.UnaryAppend || proto.Size(req) > streamMaxBytes {
		return n.api.Append(ctx, req)
	}
	as, err := n.stream.get(ctx, n)
	if err != nil {
		return nil, err
	}
	if as != nil {
		resp, err := as.do(ctx, req)
		if !errors.Is(err, errStreamUnsupported) {
			return resp, err
		}
	}
	return n.api.Append(ctx, req)
}

// streamSlot holds a node's shared AppendStream.
type streamSlot struct {
	mu struct {
		sync.Mutex
		cur   *appendStream // nil: none open
		unary time.Time     // appends go unary until then (no AppendStream)
	}
}

// get returns the node's open stream, opening one if there is none, or
// nil when appends to the node go unary. Appends to a node wait for one
// opening at a time; ctx bounds the opening.
func (s *streamSlot) get(ctx context.Context, n *node) (*appendStream, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.cur != nil {
		return s.mu.cur, nil
	}
	if time.Now().Before(s.mu.unary) {
		return nil, nil
	}
	// The stream outlives this append: its context is the stream's own,
	// cancelled by ctx only while opening.
	sctx, cancel := context.WithCancel(context.Background())
	stop := context.AfterFunc(ctx, cancel)
	call, err := n.api.AppendStream(sctx)
	if !stop() {
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	if err != nil {
		cancel()
		return nil, err
	}
	as := &appendStream{addr: n.addr, slot: s, call: call, cancel: cancel,
		sendq: make(chan *tsstorev1.AppendStreamRequest), done: make(chan struct{})}
	as.mu.waiting = make(map[uint64]chan streamAnswer)
	s.mu.cur = as
	go as.sendLoop()
	go as.recvLoop()
	return as, nil
}

// dropped forgets as once it is broken; unsupported sends the node's
// appends unary for streamReprobe.
func (s *streamSlot) dropped(as *appendStream, unsupported bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.cur == as {
		s.mu.cur = nil
	}
	if unsupported {
		s.mu.unary = time.Now().Add(streamReprobe)
	}
}

// close ends the open stream (Client.Close); its appends fail with Canceled.
func (s *streamSlot) close() {
	s.mu.Lock()
	as := s.mu.cur
	s.mu.Unlock()
	if as != nil {
		as.closed.Store(true)
		as.cancel()
	}
}

// appendStream is one open AppendStream call. Its two goroutines, the
// sender and the receiver, end with the call; the receiver ends it for
// good (broke) when Recv fails.
type appendStream struct {
	addr   string
	slot   *streamSlot
	call   tsstorev1.EventStore_AppendStreamClient
	cancel context.CancelFunc // ends the call
	closed atomic.Bool        // ended by Client.Close
	sendq  chan *tsstorev1.AppendStreamRequest
	done   chan struct{} // closed once broken
	mu     struct {
		sync.Mutex
		next    uint64                       // id of the latest request
		waiting map[uint64]chan streamAnswer // requests awaiting an answer, by id
		err     error                        // set once broken: what later appends get
	}
}

// streamAnswer is the outcome of one append on the stream.
type streamAnswer struct {
	resp *tsstorev1.AppendResponse
	err  error
}

// do sends req on the stream and waits for its answer or for ctx.
func (as *appendStream) do(ctx context.Context, req *tsstorev1.AppendRequest) (*tsstorev1.AppendResponse, error) {
	ch := make(chan streamAnswer, 1)
	as.mu.Lock()
	if err := as.mu.err; err != nil {
		as.mu.Unlock()
		return nil, err
	}
	as.mu.next++
	id := as.mu.next
	as.mu.waiting[id] = ch
	as.mu.Unlock()
	m := &tsstorev1.AppendStreamRequest{Id: id, Append: req}
	if d, ok := ctx.Deadline(); ok { // the server stops waiting when this attempt does
		m.TimeoutMs = uint32(min(max(time.Until(d).Milliseconds()+1, 1), math.MaxUint32))
	}
	select {
	case as.sendq <- m:
	case a := <-ch: // broke before req was sent
		return a.resp, a.err
	case <-ctx.Done():
		as.forget(id)
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	select {
	case a := <-ch:
		return a.resp, a.err
	case <-ctx.Done():
		// Like a unary call that times out: the append may still commit.
		as.forget(id)
		return nil, status.FromContextError(ctx.Err()).Err()
	}
}

func (as *appendStream) forget(id uint64) {
	as.mu.Lock()
	delete(as.mu.waiting, id)
	as.mu.Unlock()
}

// sendLoop sends requests in the order do hands them over.
func (as *appendStream) sendLoop() {
	for {
		select {
		case req := <-as.sendq:
			if err := as.call.Send(req); err != nil {
				if !errors.Is(err, io.EOF) {
					as.cancel() // an error of the client's own: end the call
				}
				return // recvLoop learns from Recv why the call ended
			}
		case <-as.done:
			return
		}
	}
}

// recvLoop hands each answer to the append waiting for it, until the call
// ends.
func (as *appendStream) recvLoop() {
	for {
		m, err := as.call.Recv()
		if err != nil {
			as.broke(err)
			return
		}
		as.mu.Lock()
		ch, ok := as.mu.waiting[m.GetId()]
		delete(as.mu.waiting, m.GetId())
		as.mu.Unlock()
		if ok { // else its append gave up waiting
			ch <- answer(m)
		}
	}
}

// answer turns a response into the outcome a unary Append would have had.
func answer(m *tsstorev1.AppendStreamResponse) streamAnswer {
	switch r := m.GetResult().(type) {
	case *tsstorev1.AppendStreamResponse_Append:
		return streamAnswer{resp: r.Append}
	case *tsstorev1.AppendStreamResponse_Error:
		if r.Error.GetCode() != int32(codes.OK) {
			return streamAnswer{err: status.ErrorProto(r.Error)}
		}
	}
	return streamAnswer{err: status.Errorf(codes.Internal, "client: append stream answer %d has neither offsets nor an error", m.GetId())}
}

// broke ends the stream after Recv failed with err: the slot forgets it
// and every append waiting on it gets the failure.
func (as *appendStream) broke(err error) {
	failure := as.failure(err)
	as.slot.dropped(as, errors.Is(failure, errStreamUnsupported))
	as.mu.Lock()
	as.mu.err = failure
	waiting := as.mu.waiting
	as.mu.waiting = nil
	as.mu.Unlock()
	close(as.done)
	as.cancel()
	for _, ch := range waiting {
		ch <- streamAnswer{err: failure}
	}
}

// failure is what the appends on a stream that ended with err get.
func (as *appendStream) failure(err error) error {
	switch status.Code(err) {
	case codes.Unimplemented:
		return errStreamUnsupported
	case codes.Unauthenticated, codes.PermissionDenied:
		return err // refused when opened, before any append was read
	}
	if as.closed.Load() {
		return status.Error(codes.Canceled, "client: append stream closed")
	}
	return status.Errorf(codes.Unavailable, "client: append stream to %s broke, outcome unknown: %v", as.addr, err)
}
