package server

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	pb "github.com/tsstore/tsstore/proto/tsstorev1"
)

// A request budget lets reads wait for room, never lets what is read and
// held pass its size, refuses a request read that would take the held
// bytes past the size less one read, and recovers once requests are
// answered.
func TestRequestBudgetBounds(t *testing.T) {
	const read = 3 << 20
	b := newRequestBudget(2 * read)
	ctx := context.Background()
	if err := b.startRead(ctx, read); err != nil {
		t.Fatal(err)
	}
	if err := b.startRead(ctx, read); err != nil {
		t.Fatal(err)
	}
	// Full: a third read waits until one ends.
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := b.startRead(short, read); err == nil {
		t.Fatal("a third read of a full budget did not wait")
	}
	b.endRead(read)
	if !b.hold(2<<20, read) {
		t.Fatal("the first request read was refused")
	}
	if b.hold(2<<20, read) {
		t.Fatal("a request that takes the held bytes past the size less one read was admitted")
	}
	if !b.hold(1<<20, read) {
		t.Fatal("a request that fits was refused")
	}
	if reading, held := b.inUse(); reading+held > b.size {
		t.Fatalf("%d bytes being read and %d held exceed the budget of %d", reading, held, b.size)
	}
	done := make(chan error, 1)
	go func() { done <- b.startRead(ctx, read) }()
	b.endRead(read)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	b.endRead(read)
	b.release(2 << 20)
	b.release(1 << 20)
	if reading, held := b.inUse(); reading != 0 || held != 0 {
		t.Fatalf("%d bytes being read and %d held after everything was given back", reading, held)
	}
}

// appendOutcomes counts the answers attackers got.
type appendOutcomes struct {
	ok, exhausted atomic.Int64
	mu            sync.Mutex
	other         []error
	capNamed      atomic.Bool
}

func (o *appendOutcomes) note(err error) {
	switch status.Code(err) {
	case codes.OK:
		o.ok.Add(1)
	case codes.ResourceExhausted:
		o.exhausted.Add(1)
		_, r := reason(err)
		if msg := err.Error(); r == pb.ErrorReason_ERROR_REASON_OVERLOADED.String() &&
			(strings.Contains(msg, "node-request-bytes") || strings.Contains(msg, "conn-request-bytes")) {
			o.capNamed.Store(true)
		}
	default:
		o.mu.Lock()
		o.other = append(o.other, err)
		o.mu.Unlock()
	}
}

func bigAppend() *pb.AppendRequest {
	payload := strings.Repeat("x", 900<<10)
	return &pb.AppendRequest{Events: []*pb.Event{ev("run/big", payload), ev("run/big", payload)}}
}

// Authenticated clients that send large appends concurrently, on many
// connections, unary and over AppendStream, are refused ResourceExhausted
// once the request budgets are spent (not held in memory, not left to
// hang), while a well-behaved producer on its own connection keeps
// appending; once the load ends, the budgets are empty and a large append
// goes through.
func TestLargeAppendsAreRefusedWhileOthersAppend(t *testing.T) {
	p := newTestPKI(t)
	tokens := testTokens(t)
	tc := newTestCluster(t, 1, func(c *Config) {
		p.secure(t, c, true)
		c.AuthTokensFile = tokens
		c.MaxRequestBytes = 2 << 20 // a read reserves 3 MiB
		c.ConnRequestBytes, c.NodeRequestBytes = 6<<20, 12<<20
	})
	n := tc.leader()
	creds := credentials.NewTLS(trust(t, p.ca, nil))
	// A guard against a hang, not a timing: the attack writes ~100 MB
	// through Raft, which took 9-12 s here and once more than the 20 s of
	// ctxT on a loaded machine.
	tctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ctx := withToken(tctx, appendTok)

	var out appendOutcomes
	var attackers sync.WaitGroup
	for i := range 8 {
		es := pb.NewEventStoreClient(dialWith(t, n.APIAddr(), creds))
		for range 3 {
			attackers.Add(1)
			go func() {
				defer attackers.Done()
				if i%2 == 0 {
					for range 5 {
						_, err := es.Append(ctx, bigAppend())
						out.note(err)
					}
					return
				}
				stream, err := es.AppendStream(ctx)
				if err != nil {
					out.note(err)
					return
				}
				for id := range uint64(5) {
					if err := stream.Send(&pb.AppendStreamRequest{Id: id, Append: bigAppend()}); err != nil {
						out.note(err)
						return
					}
				}
				if err := stream.CloseSend(); err != nil {
					out.note(err)
					return
				}
				for range 5 {
					resp, err := stream.Recv()
					if err != nil {
						out.note(err)
						return
					}
					if e := resp.GetError(); e != nil {
						out.note(status.ErrorProto(e))
					} else {
						out.note(nil)
					}
				}
			}()
		}
	}

	// The well-behaved producer: small appends over AppendStream, as the
	// SDK sends them, and unary ones, each answered OK.
	good := pb.NewEventStoreClient(dialWith(t, n.APIAddr(), creds))
	stream, err := good.AppendStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for id := range uint64(30) {
		if err := stream.Send(&pb.AppendStreamRequest{Id: id, Append: &pb.AppendRequest{Events: []*pb.Event{ev("run/good", "small")}}}); err != nil {
			t.Fatal(err)
		}
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if e := resp.GetError(); e != nil {
			t.Fatalf("the well-behaved producer's append %d during the attack: %v", id, status.ErrorProto(e))
		}
		// Unary, as the SDK sends appends over 1 MiB: it waits in line
		// for a read, behind the attackers' unary appends.
		// A read that waited the whole requestReadWait is refused "retry
		// later" (the SDK retries it): on a loaded CI machine one wait
		// can pass 5 s, so it is tried once more, as the SDK would.
		req := &pb.AppendRequest{Events: []*pb.Event{ev("run/good", strings.Repeat("u", 64<<10))}}
		_, err = good.Append(ctx, req)
		if status.Code(err) == codes.ResourceExhausted && strings.Contains(status.Convert(err).Message(), "had no room to read a request") {
			_, err = good.Append(ctx, req)
		}
		if err != nil {
			t.Fatalf("the well-behaved producer's unary append %d during the attack: %v", id, err)
		}
	}
	attackers.Wait()
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}

	t.Logf("attackers: %d appended, %d refused ResourceExhausted, %d other", out.ok.Load(), out.exhausted.Load(), len(out.other))
	if len(out.other) > 0 {
		t.Fatalf("attackers got answers other than OK and ResourceExhausted: %v", out.other)
	}
	if out.exhausted.Load() == 0 || !out.capNamed.Load() {
		t.Fatalf("no attacker was refused naming a cap (%d refused): the budgets did not engage", out.exhausted.Load())
	}
	if refused := counterValue(t, n.metrics.requestsRefused.WithLabelValues("node-request-bytes")) +
		counterValue(t, n.metrics.requestsRefused.WithLabelValues("conn-request-bytes")); refused != float64(out.exhausted.Load()) {
		t.Fatalf("the metric counts %v refusals, the attackers saw %d", refused, out.exhausted.Load())
	}
	// Unary refusals are in gRPC's own metrics too.
	if got := handledTotal(t, n, "Append", "ResourceExhausted"); got == 0 {
		t.Fatal("grpc_server_handled_total counts no unary Append refused ResourceExhausted")
	}

	// The load has ended: the node's budget empties (a unary append gives
	// its bytes back just after its answer leaves), and large appends go
	// through again, unary and streamed.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		reading, held := n.reqBytes.inUse()
		if reading == 0 && held == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the load the node's request budget still counts %d bytes being read and %d held", reading, held)
		}
	}
	if _, err := good.Append(ctx, bigAppend()); err != nil {
		t.Fatalf("a large append after the load: %v", err)
	}
}

// twoReadNode starts a one-node cluster whose request budgets hold two
// reads (a read reserves 3 MiB of 6), with cfg applied on top.
func twoReadNode(t *testing.T, cfg func(*Config)) *Node {
	t.Helper()
	tc := newTestCluster(t, 1, func(c *Config) {
		c.MaxRequestBytes = 2 << 20
		c.ConnRequestBytes, c.NodeRequestBytes = 6<<20, 6<<20
		cfg(c)
	})
	return tc.leader()
}

// holdBothReads opens two connections that each send an Append's headers
// and 32 KiB of a 2 MiB body (within the stream's window), then, if
// trickle, 256 bytes every 50 ms (5 KiB/s, never quiet for 300 ms) until
// the test ends; it returns once the node reserves both reads.
func holdBothReads(t *testing.T, n *Node, trickle bool) {
	t.Helper()
	body := make([]byte, 5+32<<10)
	body[2] = 0x20
	stop := make(chan struct{})
	var trickling sync.WaitGroup
	t.Cleanup(func() { close(stop); trickling.Wait() })
	for range 2 {
		conn, err := net.Dial("tcp", n.APIAddr())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		rawStreams(t, conn, n.APIAddr(), pb.EventStore_Append_FullMethodName, 1, body, false)
		if !trickle {
			continue
		}
		trickling.Add(1)
		go func() {
			defer trickling.Done()
			fr := http2.NewFramer(conn, nil)
			for {
				select {
				case <-stop:
					return
				case <-time.After(50 * time.Millisecond):
				}
				if fr.WriteData(1, false, make([]byte, 256)) != nil {
					return // the node closed the connection
				}
			}
		}()
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if reading, _ := n.reqBytes.inUse(); reading == 2*n.maxRequestRead() {
			return
		}
		if time.Now().After(deadline) {
			reading, _ := n.reqBytes.inUse()
			t.Fatalf("the held appends reserve %d bytes, want two reads of %d", reading, n.maxRequestRead())
		}
	}
}

// appendBesideHeldReads appends a small event while both reads are held.
// cut says whether the node should cut the holders: then the append goes
// through and one or two connections were cut (the second may not be
// needed: the first one's room serves the append); else it is refused
// ResourceExhausted naming the cap (not left to hang) and none was cut.
func appendBesideHeldReads(t *testing.T, n *Node, cut bool) {
	t.Helper()
	_, err := dial(t, n).Append(ctxT(t), &pb.AppendRequest{Events: []*pb.Event{ev("run/good", "small")}})
	got := counterValue(t, n.metrics.stalledRequestConnsCut)
	if !cut {
		wantStatus(t, err, codes.ResourceExhausted, "node-request-bytes")
		if got != 0 {
			t.Fatalf("%v connections cut, want none", got)
		}
		return
	}
	if err != nil {
		t.Fatalf("an append while two held bodies had the node's reads: %v", err)
	}
	if got < 1 || got > 2 {
		t.Fatalf("%v connections cut, want 1 or 2 (the holders)", got)
	}
}

// Clients that send an Append's headers and stall its body hold the
// node's reads of append requests. With the stall cut, their connections
// are closed once another append waits, and it goes through; without it,
// the other append is refused ResourceExhausted naming the cap.
func TestStalledAppendBodiesAreCut(t *testing.T) {
	for _, cut := range []bool{true, false} {
		t.Run(fmt.Sprintf("cut=%v", cut), func(t *testing.T) {
			n := twoReadNode(t, func(c *Config) {
				c.SendStallTimeout = 0
				if cut {
					c.SendStallTimeout = 300 * time.Millisecond
				}
			})
			holdBothReads(t, n, false)
			appendBesideHeldReads(t, n, cut)
		})
	}
}

// Clients that send an Append's headers and then trickle its body, a
// few bytes often enough that their socket never goes quiet for
// send-stall-timeout, hold the node's reads of append requests as long as
// stalled ones. With request-min-rate their connections are closed once
// another append waits, and it goes through; with it off, the stall cut
// alone does not see them and the other append is refused naming the cap.
func TestTricklingAppendBodiesAreCut(t *testing.T) {
	for _, minRate := range []int64{1 << 20, 0} {
		t.Run(fmt.Sprintf("min-rate=%d", minRate), func(t *testing.T) {
			n := twoReadNode(t, func(c *Config) {
				c.SendStallTimeout = 300 * time.Millisecond
				c.RequestMinRate = minRate
			})
			holdBothReads(t, n, true)
			appendBesideHeldReads(t, n, minRate > 0)
		})
	}
}

// Reads that wait are given room in the order they asked: with waiters
// woken together, a producer's append lost every race to attackers that
// retry at once (docs/benchmarks.md, x with big appenders).
func TestRequestBudgetServesReadsInOrder(t *testing.T) {
	const read = 1 << 20
	b := newRequestBudget(2 * read)
	ctx := context.Background()
	for range 2 {
		if err := b.startRead(ctx, read); err != nil {
			t.Fatal(err)
		}
	}
	served := make(chan int, 3)
	for i := range 3 {
		go func() {
			if err := b.startRead(ctx, read); err == nil {
				served <- i
			}
		}()
		// The next one asks only once this one waits in line.
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
			b.mu.Lock()
			queued := len(b.queue)
			b.mu.Unlock()
			if queued == i+1 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d reads wait, want %d", queued, i+1)
			}
		}
	}
	for want := range 3 {
		b.endRead(read)
		if got := <-served; got != want {
			t.Fatalf("read %d was served before read %d", got, want)
		}
	}
}
