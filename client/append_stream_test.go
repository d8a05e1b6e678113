package client

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tsstore/tsstore/proto/tsstorev1"
)

// producerLogs applies appends like the FSM: one dedupLog per producer id.
type producerLogs struct {
	t  *testing.T
	mu sync.Mutex
	m  map[string]*dedupLog
}

func (p *producerLogs) log(id string) *dedupLog {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.m == nil {
		p.m = make(map[string]*dedupLog)
	}
	d := p.m[id]
	if d == nil {
		d = &dedupLog{t: p.t}
		p.m[id] = d
	}
	return d
}

func (p *producerLogs) append(call int, req *tsstorev1.AppendRequest) (*tsstorev1.AppendResponse, error) {
	return p.log(req.GetProducerId()).append(call, req)
}

// streamServer serves AppendStream on f: each request is decided by
// f.Append on its own goroutine and answered in completion order. With
// breakEvery > 0 the call ends with Unavailable right after every
// breakEvery-th request was applied, before its answer is sent, so the
// client cannot know it committed. served counts requests decided. A
// request must carry the attempt's timeout (RequestTimeout).
func streamServer(f *fakeNode, breakEvery int64, served *atomic.Int64) func(int, tsstorev1.EventStore_AppendStreamServer) error {
	return func(_ int, s tsstorev1.EventStore_AppendStreamServer) error {
		ctx := s.Context()
		reqs, recvErr := make(chan *tsstorev1.AppendStreamRequest), make(chan error, 1)
		go func() { // ends with the call
			for {
				r, err := s.Recv()
				if err != nil {
					recvErr <- err
					return
				}
				select {
				case reqs <- r:
				case <-ctx.Done():
					return
				}
			}
		}()
		var wg sync.WaitGroup
		defer wg.Wait()
		var sendMu sync.Mutex
		broke := make(chan struct{})
		var once sync.Once
		for {
			select {
			case r := <-reqs:
				wg.Add(1)
				go func() {
					defer wg.Done()
					if ms := r.GetTimeoutMs(); ms == 0 || ms > 10_001 { // the attempt's RequestTimeout, 10 s
						sendMu.Lock()
						defer sendMu.Unlock()
						_ = s.Send(&tsstorev1.AppendStreamResponse{Id: r.GetId(), Result: &tsstorev1.AppendStreamResponse_Error{
							Error: status.Newf(codes.InvalidArgument, "timeout_ms %d, want the attempt's", ms).Proto()}})
						return
					}
					resp, err := f.Append(ctx, r.GetAppend())
					if k := served.Add(1); breakEvery > 0 && k%breakEvery == 0 {
						once.Do(func() { close(broke) })
						return
					}
					out := &tsstorev1.AppendStreamResponse{Id: r.GetId(), Result: &tsstorev1.AppendStreamResponse_Append{Append: resp}}
					if err != nil {
						out.Result = &tsstorev1.AppendStreamResponse_Error{Error: status.Convert(err).Proto()}
					}
					sendMu.Lock()
					defer sendMu.Unlock()
					select {
					case <-broke:
					default:
						_ = s.Send(out)
					}
				}()
			case <-broke:
				return status.Error(codes.Unavailable, "stream broken by the test")
			case err := <-recvErr:
				if errors.Is(err, io.EOF) {
					return nil
				}
				return err
			}
		}
	}
}

func leaderStatus() (*tsstorev1.StatusResponse, error) {
	return &tsstorev1.StatusResponse{Role: "leader"}, nil
}

// runProducers runs producers × appends one-event appends, one goroutine
// per producer, and checks that every producer's log holds its events
// exactly once, in order.
func runProducers(t *testing.T, c *Client, logs *producerLogs, producers, appends int) {
	t.Helper()
	ctx := testCtx(t)
	var wg sync.WaitGroup
	for i := range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := c.NewProducer(fmt.Sprintf("p%d", i))
			for j := range appends {
				if _, err := p.Append(ctx, ev(fmt.Sprintf("%d.%d", i, j))); err != nil {
					t.Errorf("producer %d append %d: %v", i, j, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	for i := range producers {
		got := logs.log(fmt.Sprintf("p%d", i)).payloads()
		if len(got) != appends {
			t.Fatalf("producer %d: log holds %d events, want %d", i, len(got), appends)
		}
		for j, p := range got {
			if want := fmt.Sprintf("%d.%d", i, j); p != want {
				t.Fatalf("producer %d: log[%d] = %q, want %q", i, j, p, want)
			}
		}
	}
}

// The producers of a client share one AppendStream to the node.
func TestAppendStreamManyProducers(t *testing.T) {
	logs := &producerLogs{t: t}
	var served atomic.Int64
	f := &fakeNode{append: logs.append, status: leaderStatus}
	f.stream = streamServer(f, 0, &served)
	startFake(t, f)
	c := newTestClient(t, f.addr)
	const producers, appends = 16, 25
	runProducers(t, c, logs, producers, appends)
	if n := f.streams(); n != 1 {
		t.Fatalf("%d AppendStream calls, want 1 shared by all producers", n)
	}
	if s, all := served.Load(), len(f.appends()); s != producers*appends || all != producers*appends {
		t.Fatalf("%d appends over the stream, %d in all; want %d, none unary", s, all, producers*appends)
	}
}

// A stream that breaks with appends in flight (one of them committed
// without an answer) fails them as outcome unknown; the producers retry
// with the same sequence on a new stream and every event is written once,
// in order.
func TestAppendStreamBreakKeepsExactlyOnce(t *testing.T) {
	logs := &producerLogs{t: t}
	var served atomic.Int64
	f := &fakeNode{append: logs.append, status: leaderStatus}
	f.stream = streamServer(f, 7, &served)
	startFake(t, f)
	cfg := DefaultConfig(f.addr)
	cfg.RetryBackoff, cfg.MaxRetryBackoff, cfg.MaxRetries = time.Millisecond, 5*time.Millisecond, 100
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	runProducers(t, c, logs, 8, 30)
	if n := f.streams(); n < 10 {
		t.Fatalf("%d AppendStream calls; the test breaks one every 7 appends", n)
	}
}

// An AsyncProducer's pipelined requests over a stream that keeps breaking
// still land exactly once in Send order.
func TestAsyncProducerOverBrokenAppendStream(t *testing.T) {
	d := &dedupLog{t: t, delay: time.Millisecond}
	var served atomic.Int64
	f := &fakeNode{append: d.append, status: leaderStatus}
	f.stream = streamServer(f, 5, &served)
	startFake(t, f)
	c := newTestClient(t, f.addr)
	a, err := c.NewAsyncProducer("trainer-1", AsyncOptions{MaxBatchEvents: 16, MaxInflight: 8})
	if err != nil {
		t.Fatal(err)
	}
	order, _ := sendAll(t, a, 200)
	if err := a.Close(testCtx(t)); err != nil {
		t.Fatalf("Close: %v", err)
	}
	var want []string
	for _, ps := range order {
		want = append(want, ps...)
	}
	got := d.payloads()
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("log holds %d events, want %d in Send order", len(got), len(want))
	}
	if f.streams() < 2 {
		t.Fatalf("%d AppendStream calls; the test breaks one every 5 requests", f.streams())
	}
}

// A server without AppendStream (Unimplemented) gets unary Appends, and is
// not asked again for a while.
func TestAppendFallsBackToUnary(t *testing.T) {
	d := &dedupLog{}
	f := newDedupNode(t, d) // no stream handler: Unimplemented
	c := newTestClient(t, f.addr)
	p := c.NewProducer("p")
	for i := range 3 {
		res, err := p.Append(testCtx(t), ev(fmt.Sprint(i)))
		if err != nil || res.FirstOffset != uint64(i) {
			t.Fatalf("append %d: %+v %v", i, res, err)
		}
	}
	if n, u := f.streams(), len(f.appends()); n != 1 || u != 3 {
		t.Fatalf("%d AppendStream calls and %d unary appends; want 1 and 3", n, u)
	}
}

// A stream refused when it opens (a token without the append role) fails
// the append as unary Append would: definite, not retried.
func TestAppendStreamRefusedAtOpen(t *testing.T) {
	f := startFake(t, &fakeNode{status: leaderStatus, stream: func(int, tsstorev1.EventStore_AppendStreamServer) error {
		return status.Error(codes.PermissionDenied, "AppendStream needs role append")
	}})
	c := newTestClient(t, f.addr)
	p := c.NewProducer("p")
	_, err := p.Append(testCtx(t), ev("x"))
	if status.Code(err) != codes.PermissionDenied || MayHaveCommitted(err) {
		t.Fatalf("append: %v, want PermissionDenied, known not committed", err)
	}
	if n, u := f.streams(), len(f.appends()); n != 1 || u != 0 || p.NextSeq() != 1 {
		t.Fatalf("%d AppendStream calls, %d unary appends, next seq %d; want 1, 0, 1", n, u, p.NextSeq())
	}
}

// Config.UnaryAppend never opens the stream.
func TestUnaryAppendConfig(t *testing.T) {
	d := &dedupLog{}
	f := newDedupNode(t, d)
	cfg := DefaultConfig(f.addr)
	cfg.UnaryAppend = true
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Append(testCtx(t), ev("x")); err != nil {
		t.Fatal(err)
	}
	if n, u := f.streams(), len(f.appends()); n != 0 || u != 1 {
		t.Fatalf("%d AppendStream calls and %d unary appends; want 0 and 1", n, u)
	}
}
