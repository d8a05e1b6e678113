package client

import (
	"context"
	"errors"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tsstore/tsstore/proto/tsstorev1"
	"github.com/tsstore/tsstore/record"
)

// fakeNode is a tiny in-test EventStore server. Each handler delegates to
// an optional function; requests are recorded for assertions.
type fakeNode struct {
	tsstorev1.UnimplementedEventStoreServer
	addr string

	append    func(call int, req *tsstorev1.AppendRequest) (*tsstorev1.AppendResponse, error)
	read      func(call int, req *tsstorev1.ReadRequest, s tsstorev1.EventStore_ReadServer) error
	subscribe func(call int, req *tsstorev1.ReadRequest, s tsstorev1.EventStore_SubscribeServer) error
	list      func(call int, req *tsstorev1.ListStreamsRequest) (*tsstorev1.ListStreamsResponse, error)
	status    func() (*tsstorev1.StatusResponse, error)
	// stream serves AppendStream; nil answers Unimplemented, as a server
	// older than AppendStream does.
	stream func(call int, s tsstorev1.EventStore_AppendStreamServer) error

	// stop kills the node: it closes the listener and every connection.
	stop func()

	mu struct {
		sync.Mutex
		appends []*tsstorev1.AppendRequest
		reads   []*tsstorev1.ReadRequest
		subs    []*tsstorev1.ReadRequest
		lists   []*tsstorev1.ListStreamsRequest
		streams int // AppendStream calls
	}
}

func (f *fakeNode) Subscribe(req *tsstorev1.ReadRequest, s tsstorev1.EventStore_SubscribeServer) error {
	f.mu.Lock()
	f.mu.subs = append(f.mu.subs, req)
	call := len(f.mu.subs)
	f.mu.Unlock()
	if f.subscribe == nil {
		return status.Error(codes.Unimplemented, "no subscribe")
	}
	return f.subscribe(call, req, s)
}

func (f *fakeNode) ListStreams(_ context.Context, req *tsstorev1.ListStreamsRequest) (*tsstorev1.ListStreamsResponse, error) {
	f.mu.Lock()
	f.mu.lists = append(f.mu.lists, req)
	call := len(f.mu.lists)
	f.mu.Unlock()
	if f.list == nil {
		return nil, status.Error(codes.Unimplemented, "no list")
	}
	return f.list(call, req)
}

func (f *fakeNode) subs() []*tsstorev1.ReadRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.mu.subs)
}

func (f *fakeNode) lists() []*tsstorev1.ListStreamsRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.mu.lists)
}

func (f *fakeNode) Append(_ context.Context, req *tsstorev1.AppendRequest) (*tsstorev1.AppendResponse, error) {
	f.mu.Lock()
	f.mu.appends = append(f.mu.appends, req)
	call := len(f.mu.appends)
	f.mu.Unlock()
	if f.append == nil {
		return nil, status.Error(codes.Unimplemented, "no append")
	}
	return f.append(call, req)
}

func (f *fakeNode) AppendStream(s tsstorev1.EventStore_AppendStreamServer) error {
	f.mu.Lock()
	f.mu.streams++
	call := f.mu.streams
	f.mu.Unlock()
	if f.stream == nil {
		return status.Error(codes.Unimplemented, "unknown method AppendStream for service tsstore.v1.EventStore")
	}
	return f.stream(call, s)
}

func (f *fakeNode) streams() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mu.streams
}

func (f *fakeNode) Read(req *tsstorev1.ReadRequest, s tsstorev1.EventStore_ReadServer) error {
	f.mu.Lock()
	f.mu.reads = append(f.mu.reads, req)
	call := len(f.mu.reads)
	f.mu.Unlock()
	if f.read == nil {
		return status.Error(codes.Unimplemented, "no read")
	}
	return f.read(call, req, s)
}

func (f *fakeNode) Status(context.Context, *tsstorev1.StatusRequest) (*tsstorev1.StatusResponse, error) {
	if f.status == nil {
		return &tsstorev1.StatusResponse{Role: "follower"}, nil
	}
	return f.status()
}

func (f *fakeNode) appends() []*tsstorev1.AppendRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.mu.appends)
}

func (f *fakeNode) reads() []*tsstorev1.ReadRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.mu.reads)
}

// startFake serves f on a loopback port until the test ends.
func startFake(t *testing.T, f *fakeNode) *fakeNode {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	f.addr = lis.Addr().String()
	srv := grpc.NewServer()
	tsstorev1.RegisterEventStoreServer(srv, f)
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(lis)
	}()
	f.stop = srv.Stop
	t.Cleanup(func() {
		srv.Stop()
		<-served
	})
	return f
}

// deadAddr returns a loopback address nothing listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	addr := lis.Addr().String()
	lis.Close()
	return addr
}

func newTestClient(t *testing.T, addrs ...string) *Client {
	t.Helper()
	cfg := DefaultConfig(addrs...)
	cfg.RetryBackoff = time.Millisecond
	cfg.MaxRetryBackoff = 5 * time.Millisecond
	cfg.MaxRetries = 5
	c, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// okAppend answers an append with offsets derived from its sequence.
func okAppend(req *tsstorev1.AppendRequest, dup bool) *tsstorev1.AppendResponse {
	first := req.GetProducerSeq() * 10
	return &tsstorev1.AppendResponse{
		FirstOffset: first, LastOffset: first + uint64(len(req.GetEvents())) - 1,
		RaftIndex: 7, TimestampUnixNano: 123, Duplicate: dup,
		StreamVersions: []*tsstorev1.StreamVersion{{Stream: "s", Version: 2}},
	}
}

func ev(payload string) Event { return Event{Stream: "s", Type: "T", Payload: []byte(payload)} }

func TestAppendRetryResendsSameSeq(t *testing.T) {
	f := startFake(t, &fakeNode{
		status: func() (*tsstorev1.StatusResponse, error) { return &tsstorev1.StatusResponse{Role: "leader"}, nil },
		append: func(call int, req *tsstorev1.AppendRequest) (*tsstorev1.AppendResponse, error) {
			if call == 1 {
				return nil, status.Error(codes.Unavailable, "leader stepped down")
			}
			return okAppend(req, call == 2), nil
		},
	})
	c := newTestClient(t, f.addr)
	p := c.NewProducer("prod-a")

	res, err := p.Append(testCtx(t), ev("a"), ev("b"))
	if err != nil {
		t.Fatalf("Append: %v", err)
	}
	got := f.appends()
	if len(got) != 2 {
		t.Fatalf("server saw %d appends, want 2", len(got))
	}
	for i, r := range got {
		if r.GetProducerId() != "prod-a" || r.GetProducerSeq() != 1 || len(r.GetEvents()) != 2 {
			t.Fatalf("attempt %d: id %q seq %d events %d, want prod-a/1/2", i, r.GetProducerId(), r.GetProducerSeq(), len(r.GetEvents()))
		}
	}
	if !res.Duplicate || res.FirstOffset != 10 || res.LastOffset != 11 || res.RaftIndex != 7 ||
		res.Timestamp.UnixNano() != 123 || res.StreamVersions["s"] != 2 {
		t.Fatalf("result %+v", res)
	}
	if p.NextSeq() != 3 {
		t.Fatalf("NextSeq = %d after committing seq 1..2, want 3", p.NextSeq())
	}

	if _, err := p.Append(testCtx(t), ev("c")); err != nil {
		t.Fatalf("second Append: %v", err)
	}
	if got := f.appends(); got[2].GetProducerSeq() != 3 {
		t.Fatalf("second append seq %d, want 3", got[2].GetProducerSeq())
	}
}

func TestAppendDefiniteFailureKeepsSeq(t *testing.T) {
	f := startFake(t, &fakeNode{
		append: func(call int, req *tsstorev1.AppendRequest) (*tsstorev1.AppendResponse, error) {
			if call == 1 {
				return nil, statusErr(t, codes.FailedPrecondition, tsstorev1.ErrorReason_ERROR_REASON_WRONG_EXPECTED_VERSION,
					map[string]string{"stream": "s", "actual_version": "4", "expected": "no_stream"})
			}
			return okAppend(req, false), nil
		},
	})
	c := newTestClient(t, f.addr)

	_, err := c.AppendWith(testCtx(t), []Event{ev("a")},
		WithExpectedVersion("s", NoStream), WithExpectedVersion("t", Exact(3)))
	var wrong *WrongExpectedVersionError
	if !errors.As(err, &wrong) || wrong.Actual != 4 {
		t.Fatalf("err = %v, want *WrongExpectedVersionError", err)
	}
	if n := len(f.appends()); n != 1 {
		t.Fatalf("a definite failure was retried: %d attempts", n)
	}
	exp := f.appends()[0].GetExpectations()
	if len(exp) != 2 ||
		exp[0].GetStream() != "s" || exp[0].GetKind() != tsstorev1.ExpectedVersionKind_EXPECTED_VERSION_KIND_NO_STREAM ||
		exp[1].GetStream() != "t" || exp[1].GetKind() != tsstorev1.ExpectedVersionKind_EXPECTED_VERSION_KIND_EXACT || exp[1].GetVersion() != 3 {
		t.Fatalf("expectations on the wire: %v", exp)
	}

	if _, err := c.Append(testCtx(t), ev("b")); err != nil {
		t.Fatalf("Append: %v", err)
	}
	if seq := f.appends()[1].GetProducerSeq(); seq != 1 {
		t.Fatalf("after a definite failure the next append has seq %d, want 1", seq)
	}
}

func TestAppendInDoubtIsSettledFirst(t *testing.T) {
	f := startFake(t, &fakeNode{
		append: func(call int, req *tsstorev1.AppendRequest) (*tsstorev1.AppendResponse, error) {
			if call <= 2 {
				return nil, status.Error(codes.Unavailable, "partitioned")
			}
			return okAppend(req, call == 3), nil
		},
	})
	cfg := DefaultConfig(f.addr)
	cfg.RetryBackoff, cfg.MaxRetryBackoff, cfg.MaxRetries = time.Millisecond, time.Millisecond, 1
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	p := c.NewProducer("prod-b")

	if _, err := p.Append(testCtx(t), ev("a"), ev("b")); status.Code(err) != codes.Unavailable {
		t.Fatalf("err = %v, want Unavailable after retries", err)
	}
	if p.NextSeq() != 1 {
		t.Fatalf("NextSeq = %d after an ambiguous failure, want 1", p.NextSeq())
	}
	// A different append first re-sends the in-doubt one (seq 1, a+b),
	// then sends itself at seq 3.
	if _, err := p.Append(testCtx(t), ev("c")); err != nil {
		t.Fatalf("Append: %v", err)
	}
	got := f.appends()
	if len(got) != 4 {
		t.Fatalf("server saw %d appends, want 4", len(got))
	}
	if s := got[2]; s.GetProducerSeq() != 1 || string(s.GetEvents()[1].GetPayload()) != "b" {
		t.Fatalf("settling append: seq %d events %v", s.GetProducerSeq(), s.GetEvents())
	}
	if s := got[3]; s.GetProducerSeq() != 3 || string(s.GetEvents()[0].GetPayload()) != "c" {
		t.Fatalf("new append: seq %d events %v", s.GetProducerSeq(), s.GetEvents())
	}
	if p.NextSeq() != 4 {
		t.Fatalf("NextSeq = %d, want 4", p.NextSeq())
	}
}

func TestAppendSameEventsAfterDoubtIsARetry(t *testing.T) {
	f := startFake(t, &fakeNode{
		append: func(call int, req *tsstorev1.AppendRequest) (*tsstorev1.AppendResponse, error) {
			if call == 1 {
				return nil, status.Error(codes.Unavailable, "partitioned")
			}
			return okAppend(req, true), nil
		},
	})
	cfg := DefaultConfig(f.addr)
	cfg.MaxRetries = 0
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	p := c.NewProducer("prod-c")
	if _, err := p.Append(testCtx(t), ev("a")); err == nil {
		t.Fatal("first Append succeeded, want Unavailable")
	}
	if _, err := p.Append(testCtx(t), ev("a")); err != nil {
		t.Fatalf("retry by the caller: %v", err)
	}
	got := f.appends()
	if len(got) != 2 || got[1].GetProducerSeq() != 1 {
		t.Fatalf("caller's retry: %d appends, last seq %d; want 2 and seq 1", len(got), got[len(got)-1].GetProducerSeq())
	}
	if p.NextSeq() != 2 {
		t.Fatalf("NextSeq = %d, want 2", p.NextSeq())
	}
}

func TestAppendRotatesPastDeadNode(t *testing.T) {
	f := startFake(t, &fakeNode{
		append: func(_ int, req *tsstorev1.AppendRequest) (*tsstorev1.AppendResponse, error) {
			return okAppend(req, false), nil
		},
	})
	c := newTestClient(t, deadAddr(t), f.addr)
	for i := range 3 {
		if _, err := c.Append(testCtx(t), ev("x")); err != nil {
			t.Fatalf("Append %d: %v", i, err)
		}
	}
	for i, r := range f.appends() {
		if r.GetProducerSeq() != uint64(i+1) {
			t.Fatalf("append %d has seq %d", i, r.GetProducerSeq())
		}
	}
	if _, err := c.Status(testCtx(t)); err != nil {
		t.Fatalf("Status: %v", err)
	}
}

func TestAppendGoesToDiscoveredLeader(t *testing.T) {
	leader := startFake(t, &fakeNode{
		status: func() (*tsstorev1.StatusResponse, error) { return &tsstorev1.StatusResponse{Role: "leader"}, nil },
		append: func(_ int, req *tsstorev1.AppendRequest) (*tsstorev1.AppendResponse, error) {
			return okAppend(req, false), nil
		},
	})
	follower := startFake(t, &fakeNode{
		status: func() (*tsstorev1.StatusResponse, error) {
			return &tsstorev1.StatusResponse{Role: "follower", LeaderApiAddress: leader.addr}, nil
		},
	})
	// Only the follower is configured: the leader is learned from Status.
	c := newTestClient(t, follower.addr)
	for range 3 {
		if _, err := c.Append(testCtx(t), ev("x")); err != nil {
			t.Fatalf("Append: %v", err)
		}
	}
	if n := len(follower.appends()); n != 0 {
		t.Fatalf("follower got %d appends, want all on the leader", n)
	}
	if n := len(leader.appends()); n != 3 {
		t.Fatalf("leader got %d appends, want 3", n)
	}
}

func TestAppendReturnsNoLeaderWhenRetriesRunOut(t *testing.T) {
	f := startFake(t, &fakeNode{
		append: func(int, *tsstorev1.AppendRequest) (*tsstorev1.AppendResponse, error) {
			return nil, statusErr(t, codes.Unavailable, tsstorev1.ErrorReason_ERROR_REASON_NO_LEADER, nil)
		},
	})
	c := newTestClient(t, f.addr)
	_, err := c.Append(testCtx(t), ev("x"))
	if !errors.Is(err, ErrNoLeader) {
		t.Fatalf("err = %v, want ErrNoLeader", err)
	}
	if n := len(f.appends()); n != c.cfg.MaxRetries+1 {
		t.Fatalf("%d attempts, want MaxRetries+1 = %d", n, c.cfg.MaxRetries+1)
	}
}

// logBatches is a log of 10 batches of 3 events: offsets 0..29.
func logBatches(t *testing.T) [][]byte {
	var bs [][]byte
	for i := range 10 {
		bs = append(bs, buildBatch(t, batchSpec{base: uint64(3 * i), n: 3}))
	}
	return bs
}

// serveFrom sends the batches covering from onward, two per message.
func serveFrom(s tsstorev1.EventStore_ReadServer, bs [][]byte, from uint64, limit int) error {
	i := int(from / 3)
	sent := 0
	for ; i < len(bs) && sent < limit; i += 2 {
		j := min(i+2, len(bs))
		msg := slices.Concat(bs[i:j]...)
		if err := s.Send(&tsstorev1.ReadResponse{Batches: msg, NextOffset: uint64(3 * j)}); err != nil {
			return err
		}
		sent++
	}
	return nil
}

func TestReplayResumesAfterStreamBreak(t *testing.T) {
	bs := logBatches(t)
	f := startFake(t, &fakeNode{
		read: func(call int, req *tsstorev1.ReadRequest, s tsstorev1.EventStore_ReadServer) error {
			if call == 1 {
				// Two messages (batches 3..14), then the node dies.
				if err := serveFrom(s, bs, req.GetFromOffset(), 2); err != nil {
					return err
				}
				return status.Error(codes.Unavailable, "node crashed")
			}
			return serveFrom(s, bs, req.GetFromOffset(), len(bs))
		},
	})
	c := newTestClient(t, f.addr)

	var offs []uint64
	for ev, err := range c.Replay(testCtx(t), 4) {
		if err != nil {
			t.Fatalf("Replay: %v", err)
		}
		offs = append(offs, ev.Offset)
	}
	if !slices.Equal(offs, span(4, 30)) {
		t.Fatalf("offsets %v, want 4..29 exactly once", offs)
	}
	reads := f.reads()
	if len(reads) != 2 {
		t.Fatalf("%d Read calls, want 2", len(reads))
	}
	if r := reads[1]; r.GetFromOffset() != 15 || r.GetMinNextOffset() != 15 {
		t.Fatalf("resumed with from %d min_next %d, want 15 and 15", r.GetFromOffset(), r.GetMinNextOffset())
	}
}

// A node that finds a segment damaged answers DataLoss; the replay resumes
// on another replica, which holds the same bytes.
func TestReplayResumesOnAnotherNodeAfterDataLoss(t *testing.T) {
	bs := logBatches(t)
	damaged := startFake(t, &fakeNode{
		read: func(_ int, req *tsstorev1.ReadRequest, s tsstorev1.EventStore_ReadServer) error {
			if err := serveFrom(s, bs, req.GetFromOffset(), 1); err != nil {
				return err
			}
			return status.Error(codes.DataLoss, "segment: corrupt 00000000000000000000.log at position 4096")
		},
	})
	good := startFake(t, &fakeNode{
		read: func(_ int, req *tsstorev1.ReadRequest, s tsstorev1.EventStore_ReadServer) error {
			return serveFrom(s, bs, req.GetFromOffset(), len(bs))
		},
	})
	c := newTestClient(t, damaged.addr, good.addr)
	c.mu.Lock()
	c.mu.cursor = 0 // the damaged node first
	c.mu.Unlock()
	var offs []uint64
	for ev, err := range c.Replay(testCtx(t), 0) {
		if err != nil {
			t.Fatalf("Replay: %v", err)
		}
		offs = append(offs, ev.Offset)
	}
	if !slices.Equal(offs, span(0, 30)) {
		t.Fatalf("offsets %v, want 0..29 exactly once", offs)
	}
	if len(damaged.reads()) != 1 || len(good.reads()) != 1 {
		t.Fatalf("reads: %d on the damaged node, %d on the good one; want 1 and 1", len(damaged.reads()), len(good.reads()))
	}
}

func TestReplayReadYourWrites(t *testing.T) {
	f := startFake(t, &fakeNode{
		append: func(_ int, req *tsstorev1.AppendRequest) (*tsstorev1.AppendResponse, error) {
			return okAppend(req, false), nil // seq 1, 2 events: offsets 10..11
		},
		read: func(int, *tsstorev1.ReadRequest, tsstorev1.EventStore_ReadServer) error { return nil },
	})
	c := newTestClient(t, f.addr)
	if _, err := c.Append(testCtx(t), ev("a"), ev("b")); err != nil {
		t.Fatal(err)
	}
	for _, err := range c.Replay(testCtx(t), 0, To(50), MaxMessageBytes(4096), Local()) {
		t.Fatalf("empty log yielded %v", err)
	}
	for _, err := range c.Replay(testCtx(t), 0, Linearizable(), MinNextOffset(5)) {
		t.Fatalf("empty log yielded %v", err)
	}
	for _, err := range c.Replay(testCtx(t), 0) {
		t.Fatalf("empty log yielded %v", err)
	}
	reads := f.reads()
	if len(reads) != 3 {
		t.Fatalf("%d Read calls, want 3", len(reads))
	}
	if r := reads[0]; r.GetMinNextOffset() != 12 || r.GetToOffset() != 50 || r.GetMaxMessageBytes() != 4096 ||
		r.GetConsistency() != tsstorev1.Consistency_CONSISTENCY_LOCAL {
		t.Fatalf("local read request %v, want min_next_offset 12, to 50, 4096 bytes", r)
	}
	if r := reads[1]; r.GetConsistency() != tsstorev1.Consistency_CONSISTENCY_LINEARIZABLE || r.GetMinNextOffset() != 5 {
		t.Fatalf("linearizable read request %v", r)
	}
	// Without an option a replay is linearizable: never silently short.
	if r := reads[2]; r.GetConsistency() != tsstorev1.Consistency_CONSISTENCY_LINEARIZABLE {
		t.Fatalf("default replay request %v, want linearizable", r)
	}
}

func TestReplayBreakClosesStream(t *testing.T) {
	bs := logBatches(t)
	closed := make(chan struct{})
	f := startFake(t, &fakeNode{
		read: func(_ int, req *tsstorev1.ReadRequest, s tsstorev1.EventStore_ReadServer) error {
			if err := serveFrom(s, bs, req.GetFromOffset(), 1); err != nil {
				return err
			}
			<-s.Context().Done() // a tailing read: only the client ends it
			close(closed)
			return s.Context().Err()
		},
	})
	c := newTestClient(t, f.addr)
	n := 0
	for _, err := range c.Replay(testCtx(t), 0) {
		if err != nil {
			t.Fatalf("Replay: %v", err)
		}
		if n++; n == 2 {
			break
		}
	}
	select {
	case <-closed:
	case <-testCtx(t).Done():
		t.Fatal("server stream still open after the loop broke")
	}
}

func TestReplayGapFromServerStops(t *testing.T) {
	bs := logBatches(t)
	f := startFake(t, &fakeNode{
		read: func(_ int, _ *tsstorev1.ReadRequest, s tsstorev1.EventStore_ReadServer) error {
			// Batch [6, 8] is missing.
			return s.Send(&tsstorev1.ReadResponse{Batches: slices.Concat(bs[0], bs[1], bs[3]), NextOffset: 12})
		},
	})
	c := newTestClient(t, f.addr)
	var offs []uint64
	var gotErr error
	for ev, err := range c.Replay(testCtx(t), 0) {
		if err != nil {
			gotErr = err
			continue
		}
		offs = append(offs, ev.Offset)
	}
	var g *GapError
	if !errors.As(gotErr, &g) || g.From != 6 || g.To != 9 {
		t.Fatalf("err = %v, want gap [6, 9)", gotErr)
	}
	if !slices.Equal(offs, span(0, 6)) {
		t.Fatalf("offsets %v, want 0..5", offs)
	}
	if n := len(f.reads()); n != 1 {
		t.Fatalf("a gap was retried: %d reads", n)
	}
}

func TestReadBatchesRaw(t *testing.T) {
	bs := logBatches(t)
	f := startFake(t, &fakeNode{
		read: func(_ int, req *tsstorev1.ReadRequest, s tsstorev1.EventStore_ReadServer) error {
			return serveFrom(s, bs, req.GetFromOffset(), len(bs))
		},
	})
	c := newTestClient(t, f.addr)
	var bases []uint64
	for b, err := range c.ReadBatches(testCtx(t), 5, To(13)) {
		if err != nil {
			t.Fatalf("ReadBatches: %v", err)
		}
		bases = append(bases, b.Header().BaseOffset)
	}
	if want := []uint64{3, 6, 9, 12}; !slices.Equal(bases, want) {
		t.Fatalf("batch bases %v, want %v", bases, want)
	}
}

func TestOffsetCompactedIsNotRetried(t *testing.T) {
	f := startFake(t, &fakeNode{
		read: func(int, *tsstorev1.ReadRequest, tsstorev1.EventStore_ReadServer) error {
			return statusErr(t, codes.OutOfRange, tsstorev1.ErrorReason_ERROR_REASON_OFFSET_COMPACTED,
				map[string]string{"first_offset": "100"})
		},
	})
	c := newTestClient(t, f.addr)
	var gotErr error
	for _, err := range c.Replay(testCtx(t), 0) {
		gotErr = err
	}
	var oc *OffsetCompactedError
	if !errors.As(gotErr, &oc) || oc.FirstOffset != 100 {
		t.Fatalf("err = %v, want *OffsetCompactedError{100}", gotErr)
	}
	if n := len(f.reads()); n != 1 {
		t.Fatalf("%d reads, want 1", n)
	}
}

func TestClosedClient(t *testing.T) {
	f := startFake(t, &fakeNode{})
	c := newTestClient(t, f.addr)
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := c.Append(testCtx(t), ev("x")); !errors.Is(err, ErrClosed) {
		t.Fatalf("Append after Close: %v, want ErrClosed", err)
	}
	if _, err := c.Status(testCtx(t)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Status after Close: %v, want ErrClosed", err)
	}
}

func TestNewProducerIDs(t *testing.T) {
	f := startFake(t, &fakeNode{})
	c := newTestClient(t, f.addr)
	a, b := c.NewProducer(""), c.NewProducer("")
	if a.ID() == "" || a.ID() == b.ID() || len(a.ID()) > 255 {
		t.Fatalf("random ids %q and %q", a.ID(), b.ID())
	}
	if p := c.ResumeProducer("x", 42); p.ID() != "x" || p.NextSeq() != 42 {
		t.Fatalf("ResumeProducer: id %q next %d", p.ID(), p.NextSeq())
	}
	if _, err := a.Append(testCtx(t)); !errors.Is(err, ErrInvalidEvent) {
		t.Fatalf("empty append: %v, want ErrInvalidEvent", err)
	}
	if _, err := a.AppendWith(testCtx(t), []Event{ev("x")}, WithExpectedVersion("s", ExpectedVersion(-9))); err == nil {
		t.Fatal("invalid expected version accepted")
	}
}

// Every append the SDK sends carries the end-to-end checksum of its events.
func TestAppendCarriesEventChecksum(t *testing.T) {
	var got []*tsstorev1.AppendRequest
	var mu sync.Mutex
	f := startFake(t, &fakeNode{
		append: func(_ int, req *tsstorev1.AppendRequest) (*tsstorev1.AppendResponse, error) {
			mu.Lock()
			got = append(got, req)
			mu.Unlock()
			return okAppend(req, false), nil
		},
	})
	c := newTestClient(t, f.addr)
	if _, err := c.Append(testCtx(t), Event{Stream: "run/a", Type: "T", Payload: []byte("x"), Metadata: []byte("m")}, ev("b")); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 1 || got[0].EventsCrc32C == nil {
		t.Fatalf("requests %v: no checksum", got)
	}
	var want uint32
	for _, e := range got[0].Events {
		want = record.AddEvent(want, e.Stream, e.Type, e.Metadata, e.Payload)
	}
	if *got[0].EventsCrc32C != want {
		t.Fatalf("checksum %08x, want %08x", *got[0].EventsCrc32C, want)
	}
}

// AppendOnce sends one request without a producer id, and does not retry
// an append whose outcome is unknown.
func TestAppendOnce(t *testing.T) {
	var got []*tsstorev1.AppendRequest
	var mu sync.Mutex
	fail := true
	f := startFake(t, &fakeNode{
		append: func(_ int, req *tsstorev1.AppendRequest) (*tsstorev1.AppendResponse, error) {
			mu.Lock()
			defer mu.Unlock()
			got = append(got, req)
			if fail {
				return nil, status.Error(codes.Unavailable, "connection lost")
			}
			return okAppend(req, false), nil
		},
	})
	c := newTestClient(t, f.addr)
	_, err := c.AppendOnce(testCtx(t), ev("a"))
	if err == nil || !MayHaveCommitted(err) || !strings.Contains(err.Error(), "may or may not have been committed") {
		t.Fatalf("AppendOnce on a lost connection: %v", err)
	}
	mu.Lock()
	if len(got) != 1 || got[0].ProducerId != "" || got[0].EventsCrc32C == nil {
		t.Fatalf("requests %v: want one, without a producer, with its checksum", got)
	}
	fail = false
	mu.Unlock()
	if _, err := c.AppendOnce(testCtx(t), ev("b")); err != nil {
		t.Fatal(err)
	}
}

// AppendOnce passes over a seed that is down before sending anything,
// whichever seed a new client starts from; with every seed down it fails
// with ErrUnreachable, which is not in doubt: nothing was sent.
func TestAppendOnceSkipsDeadNodes(t *testing.T) {
	f := startFake(t, &fakeNode{append: func(_ int, req *tsstorev1.AppendRequest) (*tsstorev1.AppendResponse, error) {
		return okAppend(req, false), nil
	}})
	dead := deadAddr(t)
	for i := range 12 { // new clients start at a random seed
		c := newTestClient(t, dead, f.addr, deadAddr(t))
		if _, err := c.AppendOnce(testCtx(t), ev(strconv.Itoa(i))); err != nil {
			t.Fatalf("append %d with one live node of three: %v", i, err)
		}
	}
	if got := len(f.appends()); got != 12 {
		t.Fatalf("the live node got %d appends, want 12", got)
	}
	c := newTestClient(t, dead, deadAddr(t))
	_, err := c.AppendOnce(testCtx(t), ev("x"))
	if !errors.Is(err, ErrUnreachable) || MayHaveCommitted(err) {
		t.Fatalf("AppendOnce with every node down: %v (in doubt: %v), want ErrUnreachable, not in doubt", err, MayHaveCommitted(err))
	}
}

// A retry refused before the leader proposed it (DISK_FULL) says nothing
// of the earlier attempt, which may have committed: the append stays in
// doubt (EarlierAttemptError, MayHaveCommitted) and is settled before the
// next different append, which never reuses its sequence. Found by the
// jepsen disk-full scenario: the earlier attempt had committed, and the
// next append got its offsets as a "duplicate".
func TestRetryRefusedBeforeProposalStaysInDoubt(t *testing.T) {
	var diskFull error
	f := startFake(t, &fakeNode{
		append: func(call int, req *tsstorev1.AppendRequest) (*tsstorev1.AppendResponse, error) {
			switch call {
			case 1:
				return nil, status.Error(codes.Unavailable, "leader died after committing")
			case 2:
				return nil, diskFull
			}
			return okAppend(req, call == 3), nil // 3: the settle finds it committed
		},
	})
	diskFull = statusErr(t, codes.ResourceExhausted, tsstorev1.ErrorReason_ERROR_REASON_DISK_FULL, nil)
	cfg := DefaultConfig(f.addr)
	cfg.MaxRetries = 0
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	p := c.NewProducer("prod-disk")
	if _, err := p.Append(testCtx(t), ev("a")); !MayHaveCommitted(err) {
		t.Fatalf("first attempt: %v", err)
	}
	_, err = p.Append(testCtx(t), ev("a")) // the caller retries: DISK_FULL
	var earlier *EarlierAttemptError
	if !errors.As(err, &earlier) || !MayHaveCommitted(err) || earlier.Seq != 1 {
		t.Fatalf("retry refused DISK_FULL: %v, want an EarlierAttemptError that may have committed", err)
	}
	if p.NextSeq() != 1 {
		t.Fatalf("NextSeq %d after the refused retry, want 1 (still in doubt)", p.NextSeq())
	}
	if _, err := p.Append(testCtx(t), ev("b")); err != nil {
		t.Fatal(err)
	}
	got := f.appends()
	if len(got) != 4 || got[2].GetProducerSeq() != 1 || string(got[2].GetEvents()[0].GetPayload()) != "a" || got[3].GetProducerSeq() != 2 {
		t.Fatalf("appends after the refusal: %d, want the settle of seq 1 (a) then b at seq 2", len(got))
	}
}

// A retry answered with an error decided after the duplicate check (a
// sequence gap, a wrong expected version) settles the earlier attempts.
func TestRetryRefusedAfterDedupSettles(t *testing.T) {
	var gap error
	f := startFake(t, &fakeNode{
		append: func(call int, req *tsstorev1.AppendRequest) (*tsstorev1.AppendResponse, error) {
			if call == 1 {
				return nil, status.Error(codes.Unavailable, "lost")
			}
			if call == 2 {
				return nil, gap
			}
			return okAppend(req, false), nil
		},
	})
	gap = statusErr(t, codes.FailedPrecondition, tsstorev1.ErrorReason_ERROR_REASON_WRONG_EXPECTED_VERSION, map[string]string{"stream": "s"})
	cfg := DefaultConfig(f.addr)
	cfg.MaxRetries = 0
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	p := c.NewProducer("prod-wev")
	p.Append(testCtx(t), ev("a"))
	if _, err := p.Append(testCtx(t), ev("a")); !errors.Is(err, ErrWrongExpectedVersion) || MayHaveCommitted(err) {
		t.Fatalf("retry: %v", err)
	}
	if _, err := p.Append(testCtx(t), ev("b")); err != nil {
		t.Fatal(err)
	}
	if got := f.appends(); len(got) != 3 || got[2].GetProducerSeq() != 1 {
		t.Fatalf("after a settled refusal the next append takes seq 1 again: %d appends", len(got))
	}
}

// A node whose append budget is full answers OVERLOADED (nothing was
// written): the producer retries with backoff and the append goes
// through; once its retries are spent the caller gets ErrOverloaded,
// which says nothing was written by that attempt.
func TestOverloadedAppendIsRetried(t *testing.T) {
	var overloadedErr error
	var refusals atomic.Int64 // read by the fake's handler goroutines
	refusals.Store(2)
	f := startFake(t, &fakeNode{
		append: func(call int, req *tsstorev1.AppendRequest) (*tsstorev1.AppendResponse, error) {
			if int64(call) <= refusals.Load() {
				return nil, overloadedErr
			}
			return okAppend(req, false), nil
		},
	})
	overloadedErr = statusErr(t, codes.ResourceExhausted, tsstorev1.ErrorReason_ERROR_REASON_OVERLOADED, map[string]string{"cap": "node-request-bytes"})
	cfg := DefaultConfig(f.addr)
	cfg.RetryBackoff = time.Millisecond
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	p := c.NewProducer("prod-overloaded")
	if _, err := p.Append(testCtx(t), ev("a")); err != nil {
		t.Fatalf("append refused twice OVERLOADED, then accepted: %v", err)
	}
	if got := len(f.appends()); got != 3 {
		t.Fatalf("%d attempts, want 3 (two refusals and the accepted one)", got)
	}

	cfg.MaxRetries = 0
	c2, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	refusals.Store(1 << 30)
	_, err = c2.NewProducer("prod-overloaded-2").Append(testCtx(t), ev("b"))
	if !errors.Is(err, ErrOverloaded) || MayHaveCommitted(err) {
		t.Fatalf("append with no retries left: %v, want ErrOverloaded that did not commit", err)
	}
}
