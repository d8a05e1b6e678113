package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/proto"

	"github.com/tsstore/tsstore/internal/rawh2"
	pb "github.com/tsstore/tsstore/proto/tsstorev1"
)

// gateWire writes HTTP/2 frames as a gRPC client (or, for trailers, the
// node) would, for the gate's tests.
type gateWire struct {
	t   *testing.T
	buf bytes.Buffer
	fr  *http2.Framer
	hb  bytes.Buffer
	enc *hpack.Encoder
}

func newGateWire(t *testing.T, preface bool) *gateWire {
	w := &gateWire{t: t}
	if preface {
		w.buf.WriteString(http2.ClientPreface)
	}
	w.fr = http2.NewFramer(&w.buf, nil)
	w.enc = hpack.NewEncoder(&w.hb)
	return w
}

func (w *gateWire) block(path string) []byte {
	w.hb.Reset()
	for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", path},
		{":authority", "node"}, {"content-type", "application/grpc"}, {"te", "trailers"}} {
		w.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	return slices.Clone(w.hb.Bytes())
}

func (w *gateWire) check(err error) {
	w.t.Helper()
	if err != nil {
		w.t.Fatal(err)
	}
}

// message writes one gRPC message of size bytes on sid, sent bytes of it
// (all if sent < 0), in DATA frames of at most frame bytes, padding every
// other frame.
func (w *gateWire) message(sid uint32, size, sent, frame int, end bool) {
	if sent < 0 {
		sent = size
	}
	msg := make([]byte, 5+sent)
	msg[1], msg[2], msg[3], msg[4] = byte(size>>24), byte(size>>16), byte(size>>8), byte(size)
	for i := 0; len(msg) > 0; i++ {
		k := min(len(msg), frame)
		last := k == len(msg)
		if i%2 == 1 {
			w.check(w.fr.WriteDataPadded(sid, end && last, msg[:k], make([]byte, 7)))
		} else {
			w.check(w.fr.WriteData(sid, end && last, msg[:k]))
		}
		msg = msg[k:]
	}
}

// The gate follows frames split anywhere, with padding, priority and
// CONTINUATION, and reserves exactly the streaming messages larger than
// the window, from their prefix until their last byte, a reset, or the
// node's trailers.
func TestGateFollowsFrames(t *testing.T) {
	const window = 64 << 10
	c := newGateWire(t, true)
	c.check(c.fr.WriteSettings())
	// 1: AppendStream, padded HEADERS with priority.
	c.check(c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: c.block("/tsstore.v1.EventStore/AppendStream"),
		EndHeaders: true, PadLength: 3, Priority: http2.PriorityParam{StreamDep: 0, Weight: 9}}))
	// 3: unary Append, left to its handler.
	c.check(c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: c.block("/tsstore.v1.EventStore/Append"), EndHeaders: true}))
	// 5: another method, its header block split over a CONTINUATION.
	b := c.block("/tsstore.v1.EventStore/Read")
	c.check(c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 5, BlockFragment: b[:4]}))
	c.check(c.fr.WriteContinuation(5, true, b[4:]))
	// 7: AppendStream, ended by the node.
	c.check(c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 7, BlockFragment: c.block("/tsstore.v1.EventStore/AppendStream"), EndHeaders: true}))
	c.message(1, 100<<10, -1, 16<<10, false) // reserved, then given back
	c.message(3, 100<<10, -1, 16<<10, true)  // not reserved
	c.message(1, 10, -1, 16<<10, false)      // small
	c.message(1, window, -1, 1000, true)     // at the window: not reserved
	c.message(5, 200<<10, 50<<10, 16<<10, false)
	c.check(c.fr.WriteRSTStream(5, http2.ErrCodeCancel))
	c.message(7, 80<<10, 10<<10, 16<<10, false)
	client1 := slices.Clone(c.buf.Bytes())

	s := newGateWire(t, false)
	s.check(s.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 7, BlockFragment: s.block("x"), EndHeaders: true, EndStream: true}))
	server := slices.Clone(s.buf.Bytes())

	c.buf.Reset()
	c.check(c.fr.WriteData(7, false, make([]byte, 100))) // after the end: not followed
	// 9: a header block that HPACK refers back to (the same fields).
	c.check(c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 9, BlockFragment: c.block("/tsstore.v1.EventStore/AppendStream"), EndHeaders: true}))
	c.message(9, 70<<10, -1, 16<<10, true)
	client2 := slices.Clone(c.buf.Bytes())

	want := []string{"admit 102405", "release 102405", "admit 204805", "release 204805", "admit 81925", "release 81925", "admit 71685", "release 71685"}
	for _, chunk := range []int{1, 3, 9, 4096, 16<<10 + 7, 1 << 30} {
		t.Run(fmt.Sprint(chunk), func(t *testing.T) {
			var got []string
			g := newH2Scan(window, &testGateBudget{log: &got, room: 1 << 40}, nil, nil)
			feed := func(p []byte, f func([]byte) error) {
				for len(p) > 0 {
					k := min(chunk, len(p))
					if err := f(p[:k]); err != nil {
						t.Fatal(err)
					}
					p = p[k:]
				}
			}
			feed(client1, g.client)
			feed(server, func(p []byte) error { g.server(p); return nil })
			feed(client2, g.client)
			if !slices.Equal(got, want) {
				t.Fatalf("got %q, want %q", got, want)
			}
			if len(g.streams) != 0 {
				t.Fatalf("%d streams left after every stream ended", len(g.streams))
			}
		})
	}
}

// A connection that ends mid-message gives its reservation back; one whose
// admission fails, or whose frames cannot be followed, gets an error.
func TestGateReleasesAndRefuses(t *testing.T) {
	c := newGateWire(t, true)
	c.check(c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: c.block("/tsstore.v1.EventStore/AppendStream"), EndHeaders: true}))
	c.message(1, 1<<20, 1000, 16<<10, false)
	b := &testGateBudget{room: 1 << 40}
	g := newH2Scan(64<<10, b, nil, nil)
	if err := g.client(c.buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	if b.held() != 1<<20+5 {
		t.Fatalf("%d bytes reserved mid-message, want %d", b.held(), 1<<20+5)
	}
	// It counts as being received (for the stall cut) only once the node
	// opens its window: before, the node is what waits.
	if b.received() != 0 {
		t.Fatal("a message counts as being received before the node opened its window")
	}
	s := newGateWire(t, false)
	s.check(s.fr.WriteWindowUpdate(1, 1<<20))
	g.server(s.buf.Bytes())
	if b.received() != 1 {
		t.Fatalf("%d messages being received after the node opened the window, want 1", b.received())
	}
	g.close()
	if b.held() != 0 {
		t.Fatalf("%d bytes reserved after close", b.held())
	}

	// Trailers from the client end its side mid-message.
	g = newH2Scan(64<<10, b, nil, nil)
	c.check(c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: c.block("x"), EndHeaders: true, EndStream: true}))
	if err := g.client(c.buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	if b.held() != 0 || len(g.streams) != 0 {
		t.Fatalf("%d bytes reserved and %d streams followed after the client's trailers", b.held(), len(g.streams))
	}

	// Padding longer than the frame.
	bad := []byte(http2.ClientPreface)
	bad = append(bad, 0, 0, 2, h2FrameData, h2FlagPadded, 0, 0, 0, 1, 9, 0)
	if err := newH2Scan(64<<10, nil, nil, nil).client(bad); !errors.Is(err, errGateBroken) {
		t.Fatalf("overlong padding: %v, want %v", err, errGateBroken)
	}
	// A header block that is not HPACK.
	bad = []byte(http2.ClientPreface)
	bad = append(bad, 0, 0, 2, h2FrameHeaders, h2FlagEndHeaders, 0, 0, 0, 1, 0xff, 0xff)
	if err := newH2Scan(64<<10, nil, nil, nil).client(bad); !errors.Is(err, errGateBroken) {
		t.Fatalf("garbage header block: %v, want %v", err, errGateBroken)
	}
}

// testGateBudget has room bytes; a wait waits until grant gives room, or
// fails with fail.
type testGateBudget struct {
	mu    sync.Mutex
	log   *[]string
	room  int64
	used  int64
	fail  error
	grant chan struct{}
	// receiving counts the messages the node began to read (it opened
	// their window).
	receiving int
}

func (b *testGateBudget) note(s string, n int64) {
	if b.log != nil {
		*b.log = append(*b.log, fmt.Sprint(s, " ", n))
	}
}

func (b *testGateBudget) held() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}

func (b *testGateBudget) take(n int64) msgHold {
	b.used += n
	b.note("admit", n)
	return msgHold{release: func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		b.used -= n
		b.note("release", n)
	}, receiving: func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		b.receiving++
	}}
}

func (b *testGateBudget) try(_ string, n int64) (msgHold, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used+n > b.room {
		return msgHold{}, false
	}
	return b.take(n), true
}

func (b *testGateBudget) wait(ctx context.Context, _ string, n int64) (msgHold, error) {
	select {
	case <-b.grant:
	case <-ctx.Done():
		return msgHold{}, ctx.Err()
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.fail != nil {
		return msgHold{}, b.fail
	}
	return b.take(n), nil
}

func (b *testGateBudget) received() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.receiving
}

// captureConn keeps what is written to it.
type captureConn struct {
	net.Conn
	mu  sync.Mutex
	buf bytes.Buffer
}

func (c *captureConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.Write(p)
}

func (c *captureConn) written() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.buf.Bytes())
}

// A stream whose message gets no room at once is blocked: the node's
// WINDOW_UPDATEs for it are held back (split anywhere across writes,
// other frames untouched) and go out, summed, at a frame boundary once the
// reservation is taken; a wait that fails closes the connection, unless
// the stream ended first.
func TestGateHoldsBackBlockedWindows(t *testing.T) {
	for _, chunk := range []int{1, 5, 11, 1 << 20} {
		t.Run(fmt.Sprint(chunk), func(t *testing.T) {
			b := &testGateBudget{room: 0, grant: make(chan struct{})}
			cc := &captureConn{}
			g := &gatedConn{Conn: cc}
			failed := make(chan error, 1)
			g.scan = newH2Scan(64<<10, b, g.inject, func(err error) { failed <- err })

			c := newGateWire(t, true)
			c.check(c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: c.block("/tsstore.v1.EventStore/AppendStream"), EndHeaders: true}))
			c.check(c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: c.block("/tsstore.v1.EventStore/AppendStream"), EndHeaders: true}))
			c.message(1, 100<<10, 10<<10, 16<<10, false)
			if err := g.scan.client(c.buf.Bytes()); err != nil {
				t.Fatal(err)
			}
			if !g.scan.blocked(1) {
				t.Fatal("a message with no room did not block its stream")
			}

			// What grpc writes meanwhile: stream 1's window opened to the
			// message (held back), the connection's and stream 3's (not),
			// and a DATA frame for stream 1 whose end comes later.
			s := newGateWire(t, false)
			s.check(s.fr.WriteWindowUpdate(1, 100<<10+5))
			s.check(s.fr.WriteWindowUpdate(0, 7000))
			s.check(s.fr.WriteWindowUpdate(3, 9))
			s.check(s.fr.WriteWindowUpdate(1, 40))
			s.check(s.fr.WriteData(1, false, bytes.Repeat([]byte{'x'}, 100)))
			want := newGateWire(t, false)
			want.check(want.fr.WriteWindowUpdate(0, 7000))
			want.check(want.fr.WriteWindowUpdate(3, 9))
			want.check(want.fr.WriteData(1, false, bytes.Repeat([]byte{'x'}, 100)))
			wire := s.buf.Bytes()
			split := len(wire) - 40 // inside the DATA frame
			for p := wire[:split]; len(p) > 0; {
				k := min(chunk, len(p))
				if _, err := g.Write(p[:k]); err != nil {
					t.Fatal(err)
				}
				p = p[k:]
			}
			if b.received() != 0 {
				t.Fatal("a blocked message counts as being received")
			}
			// Room comes while the DATA frame is half written: the owed
			// window goes out after it, and the message counts as being
			// received.
			close(b.grant)
			for deadline := time.Now().Add(5 * time.Second); g.scan.blocked(1); time.Sleep(time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatal("the stream stayed blocked after room came")
				}
			}
			if _, err := g.Write(wire[split:]); err != nil {
				t.Fatal(err)
			}
			want.check(want.fr.WriteWindowUpdate(1, 100<<10+5+40))
			if got := cc.written(); !bytes.Equal(got, want.buf.Bytes()) {
				t.Fatalf("the node wrote\n%x\nwant\n%x", got, want.buf.Bytes())
			}
			if b.held() != 100<<10+5 || b.received() != 1 {
				t.Fatalf("%d bytes reserved and %d messages being received, want the message's %d and 1", b.held(), b.received(), 100<<10+5)
			}

			// Stream 3 blocks and its wait fails: the connection is told.
			b.fail = errors.New("no room in time")
			c.buf.Reset()
			c.message(3, 100<<10, 10<<10, 16<<10, false)
			if err := g.scan.client(c.buf.Bytes()); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-failed:
				if !errors.Is(err, b.fail) {
					t.Fatalf("failed with %v, want %v", err, b.fail)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("a failed wait did not close the connection")
			}
		})
	}
}

// A blocked stream that ends (the client resets it) stops waiting and
// does not close the connection.
func TestGateBlockedStreamEnds(t *testing.T) {
	b := &testGateBudget{room: 0, grant: make(chan struct{})}
	failed := make(chan error, 1)
	g := newH2Scan(64<<10, b, func([]byte) {}, func(err error) { failed <- err })
	c := newGateWire(t, true)
	c.check(c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: c.block("/tsstore.v1.EventStore/AppendStream"), EndHeaders: true}))
	c.message(1, 100<<10, 1000, 16<<10, false)
	c.check(c.fr.WriteRSTStream(1, http2.ErrCodeCancel))
	if err := g.client(c.buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	if g.blocked(1) || len(g.streams) != 0 {
		t.Fatal("a reset stream is still followed")
	}
	select {
	case err := <-failed:
		t.Fatalf("a reset stream's wait closed the connection: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	if b.held() != 0 {
		t.Fatalf("%d bytes reserved for a reset stream", b.held())
	}
}

// dialFlowClient opens a raw HTTP/2 connection to addr that keeps to the
// node's windows (rawh2.FlowClient).
func dialFlowClient(t *testing.T, addr string) *rawh2.FlowClient {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c, err := rawh2.New(conn, addr, "http")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// grpcMessage is req as one length-prefixed gRPC message.
func grpcMessage(t *testing.T, req proto.Message) []byte {
	b, err := proto.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	return rawh2.Message(b)
}

// A client that opens many AppendStreams on one connection and sends most
// of a large request on each, then stalls, makes the node read no more
// than the connection's request budget: the streams past it are held to
// their window until their reservation comes, and every byte is given
// back when the client goes. Meanwhile other
// clients append, and a client that sends as many large requests whole
// gets every one appended (the streams held back resume as others finish).
func TestGateBoundsStreamingMessages(t *testing.T) {
	tc := newTestCluster(t, 1, func(c *Config) {
		c.MaxRequestBytes = 1 << 20
		c.ConnRequestBytes, c.NodeRequestBytes = 4<<20, 64<<20
	})
	n := tc.leader()
	const streams = 12
	payload := bytes.Repeat([]byte{'x'}, 1_000_000)
	var msgs [][]byte
	for i := range streams {
		msgs = append(msgs, grpcMessage(t, &pb.AppendStreamRequest{Id: 1, Append: &pb.AppendRequest{
			Events: []*pb.Event{{Stream: fmt.Sprintf("big/%02d", i) /* one size */, Type: "t", Payload: payload}}}}))
	}

	// Whole requests, 12 streams on one connection that reads 4 at a
	// time: every stream is read and answered, appended or refused
	// ResourceExhausted by the held-bytes cap (reqbudget.go); the
	// connection stays open.
	whole := dialFlowClient(t, n.APIAddr()) // a long settle: a loaded machine may pause the node
	if got, _, err := whole.Send(pb.EventStore_AppendStream_FullMethodName, "", msgs, len(msgs[0]), 2*time.Second); err != nil || got != streams*len(msgs[0]) {
		t.Fatalf("sent %d bytes of whole requests (%v), want %d: the node stopped opening windows", got, err, streams*len(msgs[0]))
	}
	waitFor(t, "every large stream append answered", func() bool { return len(whole.Answers()) == streams })
	ok := 0
	for sid, raw := range whole.Answers() {
		a := new(pb.AppendStreamResponse)
		if len(raw) < 5 || proto.Unmarshal(raw[5:], a) != nil {
			t.Fatalf("stream %d answered %q", sid, raw)
		}
		if a.GetAppend() != nil {
			ok++
		} else if c := codes.Code(a.GetError().GetCode()); c != codes.ResourceExhausted {
			t.Fatalf("stream %d answered %v: %s", sid, c, a.GetError().GetMessage())
		}
	}
	t.Logf("12 whole 1 MB requests on one connection: %d appended, %d refused ResourceExhausted", ok, streams-ok)
	if ok == 0 || whole.Closed() {
		t.Fatalf("%d of 12 appended, connection closed %v", ok, whole.Closed())
	}

	// Stalled at 90%: the node reads what its connection budget allows.
	stall := dialFlowClient(t, n.APIAddr())
	upto := len(msgs[0]) * 9 / 10
	sent, _, err := stall.Send(pb.EventStore_AppendStream_FullMethodName, "", msgs, upto, 500*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	n.conns.mu.Lock()
	tcn := n.conns.conns[stall.LocalAddr().String()]
	n.conns.mu.Unlock()
	if tcn == nil {
		t.Fatal("the node does not track the stalled connection")
	}
	read := tcn.readBytes.Load()
	reading, _ := n.reqBytes.inUse()
	t.Logf("stalled client sent %d bytes (12 streams x 90%% of %d); the node read %d, reserves %d", sent, len(msgs[0]), read, reading)
	if bound := int64(4<<20 + streams*(64<<10) + 64<<10); read > bound {
		t.Fatalf("the node read %d bytes of the stalled connection, more than its request budget and the windows, %d", read, bound)
	}
	if reading > 4<<20 {
		t.Fatalf("%d bytes reserved for one connection with a budget of %d", reading, 4<<20)
	}

	// Others append meanwhile.
	if _, err := dial(t, n).Append(ctxT(t), &pb.AppendRequest{Events: []*pb.Event{ev("run/good", "small")}}); err != nil {
		t.Fatalf("an append beside the stalled connection: %v", err)
	}

	// The held-back streams wait (backpressure, not an error) until the
	// client goes; then every byte is given back.
	time.Sleep(requestReadWait + time.Second)
	if stall.Closed() {
		t.Fatal("the node closed a connection whose streams wait for room")
	}
	stall.Close()
	waitFor(t, "the stalled connection's reservations given back", func() bool {
		reading, held := n.reqBytes.inUse()
		return reading == 0 && held == 0
	})
}

// Stalled streams on several connections cannot keep the node's request
// budget from others: the node never reserves past it (nor holds, with
// what it reserves, twice it), and while a read waits for it the stall
// cut closes the connections whose admitted messages stopped arriving, so
// the waiting append goes through.
func TestGateNodeCapCutsStalledStreams(t *testing.T) {
	tc := newTestCluster(t, 1, func(c *Config) {
		c.MaxRequestBytes = 1 << 20
		c.ConnRequestBytes, c.NodeRequestBytes = 4<<20, 4<<20
		c.SendStallTimeout = 500 * time.Millisecond
	})
	n := tc.leader()
	payload := bytes.Repeat([]byte{'x'}, 1_000_000)
	var msgs [][]byte
	for i := range 4 {
		msgs = append(msgs, grpcMessage(t, &pb.AppendStreamRequest{Id: 1, Append: &pb.AppendRequest{
			Events: []*pb.Event{{Stream: fmt.Sprintf("big/%02d", i), Type: "t", Payload: payload}}}}))
	}
	// The budget's bounds (reqbudget.go): reads reserved never pass it;
	// requests read are held on top, as they are in memory already, so
	// the two together stay under twice it.
	var peak, peakReading atomic.Int64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			reading, held := n.reqBytes.inUse()
			if reading+held > peak.Load() {
				peak.Store(reading + held)
			}
			if reading > peakReading.Load() {
				peakReading.Store(reading)
			}
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	for range 2 {
		s := dialFlowClient(t, n.APIAddr())
		go s.Send(pb.EventStore_AppendStream_FullMethodName, "", msgs, len(msgs[0])*9/10, 300*time.Millisecond)
	}
	waitFor(t, "the stallers to fill the node's budget", func() bool {
		reading, _ := n.reqBytes.inUse()
		return reading >= 4*int64(len(msgs[0]))
	})

	stream, err := dial(t, n).AppendStream(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&pb.AppendStreamRequest{Id: 7, Append: &pb.AppendRequest{Events: []*pb.Event{
		{Stream: "run/good", Type: "t", Payload: payload[:600_000]}}}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetAppend() == nil {
		t.Fatalf("an append waiting beside stalled streams: %v", resp.GetError())
	}
	close(stop)
	<-sampled
	cut := counterValue(t, n.metrics.stalledRequestConnsCut)
	t.Logf("peak request bytes reserved: %d, reserved and held: %d (cap %d); stalled connections cut: %v", peakReading.Load(), peak.Load(), 4<<20, cut)
	if peakReading.Load() > 4<<20 || peak.Load() > 2*4<<20 {
		t.Fatalf("the node reserved %d request bytes and held %d with them, past its cap of %d (reserved) or twice it", peakReading.Load(), peak.Load(), 4<<20)
	}
	if cut < 1 {
		t.Fatal("no stalled connection was cut, yet the waiting append went through")
	}
}

// One token's clients, on as many connections as they like, hold at most
// that token's request budget: another token's large stream append goes
// through at once beside them, without waiting for the stall cut. Without
// the per-token budget, they take the node's.
func TestTokenRequestBudget(t *testing.T) {
	for _, perToken := range []bool{true, false} {
		t.Run(fmt.Sprintf("per-token=%v", perToken), func(t *testing.T) {
			p := newTestPKI(t)
			const bulkTok = "bulk-secret-0123456789"
			tokens := writeTokens(t, fmt.Sprintf("append trainer %s\nappend bulk %s\n", appendTok, bulkTok))
			tc := newTestCluster(t, 1, func(c *Config) {
				p.secure(t, c, true)
				c.AuthTokensFile = tokens
				c.MaxRequestBytes = 1 << 20
				c.ConnRequestBytes, c.NodeRequestBytes, c.TokenRequestBytes = 4<<20, 8<<20, 4<<20
				c.SendStallTimeout = time.Minute // no cut: the budgets alone
				if !perToken {
					c.TokenRequestBytes = 0
				}
			})
			n := tc.leader()
			payload := bytes.Repeat([]byte{'x'}, 1_000_000)
			msg := grpcMessage(t, &pb.AppendStreamRequest{Id: 1, Append: &pb.AppendRequest{
				Events: []*pb.Event{{Stream: "bulk", Type: "t", Payload: payload}}}})
			cfg := trust(t, p.ca, nil)
			cfg.NextProtos = []string{"h2"}
			for range 3 {
				conn, err := tls.Dial("tcp", n.APIAddr(), cfg)
				if err != nil {
					t.Fatal(err)
				}
				c, err := rawh2.New(conn, n.APIAddr(), "https")
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { c.Close() })
				go c.Send(pb.EventStore_AppendStream_FullMethodName, bulkTok, [][]byte{msg, msg, msg, msg}, len(msg)*9/10, time.Minute)
			}
			want := int64(8 << 20) // the node's budget, all 8 MiB
			if perToken {
				want = 4 << 20
			}
			waitFor(t, "the bulk token's stalled streams to be reserved", func() bool {
				reading, _ := n.reqBytes.inUse()
				return reading > want-int64(len(msg))
			})
			time.Sleep(200 * time.Millisecond) // any more would be reserved by now
			reading, _ := n.reqBytes.inUse()
			t.Logf("the bulk token's 12 stalled streams on 3 connections reserve %d bytes (node budget 8 MiB, token budget %v)", reading, perToken)
			if reading > want {
				t.Fatalf("the bulk token's streams reserve %d bytes, past %d", reading, want)
			}
			if !perToken {
				return
			}
			conn := dialWith(t, n.APIAddr(), credentials.NewTLS(trust(t, p.ca, nil)))
			// Behind the bulk token it would wait for the stall cut (a minute).
			ctx, cancel := context.WithTimeout(withToken(ctxT(t), appendTok), 10*time.Second)
			defer cancel()
			stream, err := pb.NewEventStoreClient(conn).AppendStream(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := stream.Send(&pb.AppendStreamRequest{Id: 1, Append: &pb.AppendRequest{Events: []*pb.Event{
				{Stream: "run/good", Type: "t", Payload: payload}}}}); err != nil {
				t.Fatal(err)
			}
			resp, err := stream.Recv()
			if err != nil || resp.GetAppend() == nil {
				t.Fatalf("another token's append beside the bulk token's stalled streams: %v %v", err, resp.GetError())
			}
		})
	}
}

// blocked reports whether stream sid's window is held back (the gate
// itself decides that per frame, in windowFor).
func (s *h2Scan) blocked(sid uint32) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.streams[sid]
	return st != nil && st.blocked
}
