package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/tsstore/tsstore/proto/tsstorev1"
)

// fakeAppendStream is the server side of an AppendStream call without
// gRPC: Recv takes requests from in (closed: the client closed its side),
// Send records the answers.
type fakeAppendStream struct {
	grpc.ServerStream
	ctx    context.Context
	in     chan *pb.AppendStreamRequest
	onSend func(recvd, sent int) // before each Send, with the counts so far
	mu     struct {
		sync.Mutex
		recvd int
		sent  []*pb.AppendStreamResponse
	}
}

func newFakeAppendStream(ctx context.Context) *fakeAppendStream {
	return &fakeAppendStream{ctx: ctx, in: make(chan *pb.AppendStreamRequest, 64)}
}

func (f *fakeAppendStream) Context() context.Context { return f.ctx }

func (f *fakeAppendStream) Recv() (*pb.AppendStreamRequest, error) {
	select {
	case r, ok := <-f.in:
		if !ok {
			return nil, io.EOF
		}
		f.mu.Lock()
		f.mu.recvd++
		f.mu.Unlock()
		return r, nil
	case <-f.ctx.Done():
		return nil, status.FromContextError(f.ctx.Err()).Err()
	}
}

func (f *fakeAppendStream) Send(r *pb.AppendStreamResponse) error {
	if f.ctx.Err() != nil {
		return status.FromContextError(f.ctx.Err()).Err()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.onSend != nil {
		f.onSend(f.mu.recvd, len(f.mu.sent))
	}
	f.mu.sent = append(f.mu.sent, r)
	return nil
}

func (f *fakeAppendStream) counts() (recvd int, sent []*pb.AppendStreamResponse) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mu.recvd, append([]*pb.AppendStreamResponse(nil), f.mu.sent...)
}

// runFakeStream serves f like the AppendStream handler; cancel ends the
// call's context once the handler returns, as gRPC does.
func runFakeStream(st *appendStream, f *fakeAppendStream, cancel context.CancelFunc) <-chan error {
	done := make(chan error, 1)
	go func() {
		defer cancel()
		go st.receive(f)
		done <- st.serve(f)
	}()
	return done
}

// blockingDecide answers an append once release lets it through (or its
// context ends), counting those that returned.
type blockingDecide struct {
	release chan struct{}
	mu      sync.Mutex
	ended   int
}

func (b *blockingDecide) decide(ctx context.Context, req *pb.AppendRequest) (*pb.AppendResponse, error) {
	defer func() {
		b.mu.Lock()
		b.ended++
		b.mu.Unlock()
	}()
	select {
	case <-b.release:
		return &pb.AppendResponse{FirstOffset: req.GetProducerSeq()}, nil
	case <-ctx.Done():
		return nil, toStatus(ctx.Err())
	}
}

func waitUntil(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func streamReq(id uint64) *pb.AppendStreamRequest {
	return &pb.AppendStreamRequest{Id: id, Append: &pb.AppendRequest{ProducerSeq: id, Events: []*pb.Event{ev("s", "x")}}}
}

// The server reads at most the bound of requests ahead of their answers:
// when the k-th answer is sent, at most bound+k-1 requests have been read.
func TestAppendStreamInflightBound(t *testing.T) {
	const bound, total = 4, 12
	b := &blockingDecide{release: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f := newFakeAppendStream(ctx)
	f.onSend = func(recvd, sent int) {
		if recvd > bound+sent {
			t.Errorf("answer %d sent with %d requests read; bound %d", sent+1, recvd, bound)
		}
	}
	st := newAppendStream(ctx, bound, b.decide, make(chan struct{}), slog.Default())
	done := runFakeStream(st, f, cancel)
	for i := range total {
		f.in <- streamReq(uint64(i + 1))
	}
	waitUntil(t, "the bound of requests read", func() bool { r, _ := f.counts(); return r == bound })
	for range total {
		b.release <- struct{}{}
	}
	close(f.in)
	if err := <-done; err != nil {
		t.Fatalf("stream closed by the client ended with %v", err)
	}
	_, sent := f.counts()
	ids := map[uint64]bool{}
	for _, r := range sent {
		if r.GetAppend().GetFirstOffset() != r.GetId() || ids[r.GetId()] {
			t.Fatalf("answer %v: wrong or repeated", r)
		}
		ids[r.GetId()] = true
	}
	if len(ids) != total {
		t.Fatalf("%d answers, want %d", len(ids), total)
	}
}

// When the node drains, the requests already read are answered and the
// call then ends with Unavailable.
func TestAppendStreamDrainAnswersWhatItRead(t *testing.T) {
	b := &blockingDecide{release: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f := newFakeAppendStream(ctx)
	draining := make(chan struct{})
	st := newAppendStream(ctx, 8, b.decide, draining, slog.Default())
	done := runFakeStream(st, f, cancel)
	for i := range 3 {
		f.in <- streamReq(uint64(i + 1))
	}
	waitUntil(t, "3 requests read", func() bool { r, _ := f.counts(); return r == 3 })
	close(draining)
	for range 3 {
		b.release <- struct{}{} // each reaches a request still deciding
	}
	err := <-done
	wantStatus(t, err, codes.Unavailable, "node is shutting down")
	if _, sent := f.counts(); len(sent) != 3 {
		t.Fatalf("%d answers before the end, want 3", len(sent))
	}
}

// A client that cancels ends the call: requests in flight see the
// cancellation and the handler waits for them.
func TestAppendStreamClientCancel(t *testing.T) {
	b := &blockingDecide{release: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	f := newFakeAppendStream(ctx)
	st := newAppendStream(ctx, 8, b.decide, make(chan struct{}), slog.Default())
	done := runFakeStream(st, f, cancel)
	f.in <- streamReq(1)
	f.in <- streamReq(2)
	waitUntil(t, "2 requests read", func() bool { r, _ := f.counts(); return r == 2 })
	cancel()
	if err := <-done; status.Code(err) != codes.Canceled {
		t.Fatalf("cancelled stream ended with %v", err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ended != 2 {
		t.Fatalf("%d requests ended before the handler returned, want 2", b.ended)
	}
}

// openStream opens an AppendStream and returns a function that sends
// requests and one that collects n answers by id.
func openStream(t *testing.T, c pb.EventStoreClient) (send func(*pb.AppendStreamRequest), recv func(n int) map[uint64]*pb.AppendStreamResponse) {
	t.Helper()
	s, err := c.AppendStream(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	send = func(r *pb.AppendStreamRequest) {
		t.Helper()
		if err := s.Send(r); err != nil {
			t.Fatal(err)
		}
	}
	recv = func(n int) map[uint64]*pb.AppendStreamResponse {
		t.Helper()
		out := map[uint64]*pb.AppendStreamResponse{}
		for len(out) < n {
			r, err := s.Recv()
			if err != nil {
				t.Fatalf("after %d answers: %v", len(out), err)
			}
			if out[r.GetId()] != nil {
				t.Fatalf("id %d answered twice", r.GetId())
			}
			out[r.GetId()] = r
		}
		return out
	}
	return send, recv
}

// Each failed request is answered on its own id with the status unary
// Append returns for it: code, message and ErrorInfo.
func TestAppendStreamErrorsMatchUnary(t *testing.T) {
	tc := newTestCluster(t, 1, func(c *Config) { c.MaxEventBytes = 1024 })
	c := dial(t, tc.leader())
	send, recv := openStream(t, c)
	send(&pb.AppendStreamRequest{Id: 100, Append: &pb.AppendRequest{ProducerId: "p", ProducerSeq: 1, Events: []*pb.Event{ev("s", "a")}}})
	if r := recv(1)[100]; r.GetAppend() == nil || r.GetAppend().GetLastOffset() != 0 {
		t.Fatalf("valid append answered %v", r)
	}
	bad := map[uint64]*pb.AppendRequest{
		7:  {},                                                                   // no events
		8:  {Events: []*pb.Event{ev("s", strings.Repeat("x", 2000))}},            // too large
		9:  {Events: []*pb.Event{{Stream: "", Type: "T"}}},                       // invalid event
		10: {ProducerId: "p", ProducerSeq: 5, Events: []*pb.Event{ev("s", "b")}}, // sequence gap
	}
	for id, req := range bad {
		send(&pb.AppendStreamRequest{Id: id, Append: req})
	}
	send(&pb.AppendStreamRequest{Id: 11}) // no append at all: as one with no events
	got := recv(len(bad) + 1)
	bad[11] = &pb.AppendRequest{}
	for id, req := range bad {
		_, uerr := c.Append(ctxT(t), req)
		if want := status.Convert(uerr); want.Code() == codes.OK || !sameStatus(status.FromProto(got[id].GetError()), want) {
			t.Errorf("id %d: stream answered %v, unary %v", id, got[id], want.Proto())
		}
	}
}

// sameStatus compares code, message and the unpacked details (Any holds
// map fields in no fixed byte order).
func sameStatus(a, b *status.Status) bool {
	da, db := a.Details(), b.Details()
	if a.Code() != b.Code() || a.Message() != b.Message() || len(da) != len(db) {
		return false
	}
	for i := range da {
		ma, ok1 := da[i].(proto.Message)
		mb, ok2 := db[i].(proto.Message)
		if !ok1 || !ok2 || !proto.Equal(ma, mb) {
			return false
		}
	}
	return true
}

// Requests of one producer sent in order on the stream commit in order,
// as pipelined unary Appends do (the proposer's sequence gate).
func TestAppendStreamKeepsProducerOrder(t *testing.T) {
	tc := newTestCluster(t, 1, nil)
	send, recv := openStream(t, dial(t, tc.leader()))
	req := func(seq uint64) *pb.AppendStreamRequest {
		return &pb.AppendStreamRequest{Id: seq, Append: &pb.AppendRequest{ProducerId: "p", ProducerSeq: seq, Events: []*pb.Event{ev("s", fmt.Sprint(seq))}}}
	}
	send(req(1)) // the gate learns the producer
	recv(1)
	const n = 40
	for seq := uint64(2); seq <= n; seq++ {
		send(req(seq))
	}
	got := recv(n - 1)
	for seq := uint64(2); seq <= n; seq++ {
		if a := got[seq].GetAppend(); a == nil || a.GetFirstOffset() != seq-1 {
			t.Fatalf("seq %d answered %v", seq, got[seq])
		}
	}
}

// A follower answers every request as unary Append does there: it
// forwards each to the leader and counts it as forwarded.
func TestAppendStreamOnFollowerIsForwarded(t *testing.T) {
	tc := newTestCluster(t, 3, withMetrics)
	fl := tc.follower()
	send, recv := openStream(t, dial(t, fl))
	for i := range 5 {
		send(&pb.AppendStreamRequest{Id: uint64(i), Append: &pb.AppendRequest{Events: []*pb.Event{ev("s", fmt.Sprint(i))}}})
	}
	send(&pb.AppendStreamRequest{Id: 5, Append: &pb.AppendRequest{}})
	got := recv(6)
	offsets := map[uint64]bool{}
	for i := range uint64(5) {
		a := got[i].GetAppend()
		if a == nil || offsets[a.GetFirstOffset()] {
			t.Fatalf("id %d answered %v", i, got[i])
		}
		offsets[a.GetFirstOffset()] = true
	}
	if code, r := reason(status.ErrorProto(got[5].GetError())); code != codes.InvalidArgument || r != "ERROR_REASON_INVALID_EVENT" {
		t.Fatalf("empty append on a follower answered %v", got[5])
	}
	waitMetric(t, fl, 5, "tsstore_append_forwarded_total", `code="OK"`)
	waitMetric(t, fl, 1, "tsstore_append_requests_total", `code="InvalidArgument"`)
}

// Closing the node answers what the stream has read and ends it with
// Unavailable (not by cutting the connection after the grace period).
func TestAppendStreamEndsWhenNodeCloses(t *testing.T) {
	tc := newTestCluster(t, 1, nil)
	n := tc.leader()
	s, err := dial(t, n).AppendStream(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(streamReq(1)); err != nil {
		t.Fatal(err)
	}
	if r, err := s.Recv(); err != nil || r.GetAppend() == nil {
		t.Fatalf("append before close: %v %v", r, err)
	}
	closed := make(chan error, 1)
	go func() { closed <- n.Close() }()
	_, err = s.Recv()
	wantStatus(t, err, codes.Unavailable, "node is shutting down")
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
}

// AppendStream needs the append role, checked when the stream opens.
func TestAppendStreamNeedsAppendRole(t *testing.T) {
	p := newTestPKI(t)
	tokens := testTokens(t)
	tc := newTestCluster(t, 1, func(c *Config) { p.secure(t, c, true); c.AuthTokensFile = tokens })
	conn := dialWith(t, tc.nodes[0].APIAddr(), credentials.NewTLS(trust(t, p.ca, nil)))
	es := pb.NewEventStoreClient(conn)
	try := func(token string) (*pb.AppendStreamResponse, error) {
		s, err := es.AppendStream(withToken(ctxT(t), token))
		if err != nil {
			return nil, err
		}
		if err := s.Send(&pb.AppendStreamRequest{Id: 1, Append: oneEvent()}); err != nil && !errors.Is(err, io.EOF) {
			return nil, err
		}
		return s.Recv()
	}
	_, err := try(readTok)
	wantStatus(t, err, codes.PermissionDenied, `token "dashboard" has role read; /tsstore.v1.EventStore/AppendStream needs role append or higher`)
	if r, err := try(appendTok); err != nil || r.GetAppend() == nil {
		t.Fatalf("append token: %v %v", r, err)
	}
}

// A request's timeout_ms bounds the wait for it, as grpc-timeout bounds a
// unary Append: the answer is DeadlineExceeded.
func TestAppendStreamRequestTimeout(t *testing.T) {
	b := &blockingDecide{release: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f := newFakeAppendStream(ctx)
	st := newAppendStream(ctx, 8, b.decide, make(chan struct{}), slog.Default())
	done := runFakeStream(st, f, cancel)
	r := streamReq(1)
	r.TimeoutMs = 1
	f.in <- r
	waitUntil(t, "the answer", func() bool { _, sent := f.counts(); return len(sent) == 1 })
	close(f.in)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	_, sent := f.counts()
	if code := status.FromProto(sent[0].GetError()).Code(); code != codes.DeadlineExceeded {
		t.Fatalf("answer %v, want DeadlineExceeded", sent[0])
	}
}
