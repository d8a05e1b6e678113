package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/tsstore/tsstore/internal/rawh2"
	pb "github.com/tsstore/tsstore/proto/tsstorev1"
)

// streamAppenders are authenticated clients (the bulk token) that open
// AppendStreams on the leader during x's attack and send 90% of one big
// request (bigAppendEvents x bigAppendEventBytes) on each, keeping to the
// node's flow-control windows as a gRPC client does, then stall
// (--hostile-stream-appenders connections of --hostile-stream-appender-
// streams calls each): what the request gate (server/reqgate.go) holds to
// the request budgets, and what each open call could make the node hold
// without it (--serve-args --request-gate=false).
type streamAppenders struct {
	wg      sync.WaitGroup
	mu      sync.Mutex
	clients []*rawh2.FlowClient
	sent    int64 // message bytes sent, over all calls
	calls   int
	closed  int  // connections the node closed
	closing bool // close was called: the connections that end are ours
	failed  string
}

// startStreamAppenders opens conns connections to the node at addr with
// streams calls each; the calls send until close.
func (b *benchRun) startStreamAppenders(ctx context.Context, addr string, conns, streams int) *streamAppenders {
	a := &streamAppenders{}
	payload := []byte(strings.Repeat("x", bigAppendEventBytes))
	for i := range conns {
		req := &pb.AppendStreamRequest{Id: 1, Append: &pb.AppendRequest{}}
		for range bigAppendEvents {
			req.Append.Events = append(req.Append.Events, &pb.Event{Stream: fmt.Sprintf("x-stream/%d", i), Type: "Big", Payload: payload})
		}
		body, err := proto.Marshal(req)
		if err != nil {
			a.fail(err)
			return a
		}
		msg := rawh2.Message(body)
		msgs := make([][]byte, streams)
		for k := range msgs {
			msgs[k] = msg
		}
		conn, scheme, err := dialH2(ctx, addr, b.lc.sec.tls)
		if err != nil {
			a.fail(err)
			continue
		}
		c, err := rawh2.New(conn, addr, scheme)
		if err != nil {
			conn.Close()
			a.fail(err)
			continue
		}
		a.mu.Lock()
		a.clients = append(a.clients, c)
		a.calls += streams
		a.mu.Unlock()
		a.wg.Go(func() {
			// Until the node closes the connection or close does: a
			// settle as long as the bench never ends on its own.
			n, _, err := c.Send(pb.EventStore_AppendStream_FullMethodName, b.lc.sec.bulkToken, msgs, len(msg)*9/10, time.Hour)
			a.mu.Lock()
			a.sent += int64(n)
			if c.Closed() && !a.closing {
				a.closed++
			}
			a.mu.Unlock()
			if err != nil && !c.Closed() {
				a.fail(err)
			}
		})
	}
	return a
}

func (a *streamAppenders) fail(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.failed == "" {
		a.failed = err.Error()
	}
}

// close closes the connections and waits for the senders; it may be
// called again.
func (a *streamAppenders) close() {
	if a == nil {
		return
	}
	a.mu.Lock()
	a.closing = true
	for _, c := range a.clients {
		c.Close()
	}
	a.mu.Unlock()
	a.wg.Wait()
}

// summary says what the stream appenders sent.
func (a *streamAppenders) summary() string {
	if a == nil {
		return "no authenticated stream appenders"
	}
	a.close()
	a.mu.Lock()
	defer a.mu.Unlock()
	s := fmt.Sprintf("%d authenticated stream appenders (%d AppendStreams, each sending 90%% of a %d-byte request and stalling): %.0f MiB sent, %d connections closed by the node",
		len(a.clients), a.calls, bigAppendEvents*bigAppendEventBytes, float64(a.sent)/(1<<20), a.closed)
	if a.failed != "" {
		s += fmt.Sprintf(" (first error: %q)", a.failed)
	}
	return s
}
