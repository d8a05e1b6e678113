package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/tsstore/tsstore/proto/tsstorev1"
)

// bigAppendEvents x bigAppendEventBytes is the size of a big appender's
// request: just under the default max-request-bytes (16 MiB), of events
// just under the default max-event-bytes (1 MiB).
const (
	bigAppendEvents     = 15
	bigAppendEventBytes = 1_000_000
)

// bigAppenders are authenticated clients (the bulk token) that send
// large unary appends to the leader during x's attack, each on its own
// connection, one call at a time, until closed (--hostile-big-appenders):
// what the node's request budgets (conn-request-bytes, node-request-bytes)
// refuse, and what they cost beside c's producer.
type bigAppenders struct {
	stop  chan struct{}
	wg    sync.WaitGroup
	conns []*grpc.ClientConn

	ok, exhausted, other atomic.Int64
	mu                   sync.Mutex
	firstOther           string
	firstExhausted       string
}

// startBigAppenders starts n big appenders on the node at addr.
func (b *benchRun) startBigAppenders(ctx context.Context, addr string, n int) *bigAppenders {
	a := &bigAppenders{stop: make(chan struct{})}
	payload := []byte(strings.Repeat("x", bigAppendEventBytes))
	for i := range n {
		conn, err := grpc.NewClient(addr, b.lc.sec.dialOptions(b.lc.sec.bulkToken)...)
		if err != nil {
			a.note(err)
			continue
		}
		a.conns = append(a.conns, conn)
		es := pb.NewEventStoreClient(conn)
		req := &pb.AppendRequest{}
		for range bigAppendEvents {
			req.Events = append(req.Events, &pb.Event{Stream: fmt.Sprintf("x-big/%d", i), Type: "Big", Payload: payload})
		}
		a.wg.Go(func() {
			for {
				select {
				case <-a.stop:
					return
				case <-ctx.Done():
					return
				default:
				}
				cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				_, err := es.Append(cctx, req)
				cancel()
				a.note(err)
			}
		})
	}
	return a
}

func (a *bigAppenders) note(err error) {
	switch status.Code(err) {
	case codes.OK:
		a.ok.Add(1)
	case codes.ResourceExhausted:
		if a.exhausted.Add(1) == 1 {
			a.mu.Lock()
			a.firstExhausted = err.Error()
			a.mu.Unlock()
		}
	default:
		if a.other.Add(1) == 1 {
			a.mu.Lock()
			a.firstOther = err.Error()
			a.mu.Unlock()
		}
	}
}

// close stops the appenders, waits for their calls and closes their
// connections; it may be called again.
func (a *bigAppenders) close() {
	if a == nil {
		return
	}
	select {
	case <-a.stop:
	default:
		close(a.stop)
	}
	a.wg.Wait()
	for _, c := range a.conns {
		c.Close()
	}
	a.conns = nil
}

// summary says what the leader answered the big appenders.
func (a *bigAppenders) summary(n int) string {
	if a == nil {
		return "no authenticated big appenders"
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	s := fmt.Sprintf("%d authenticated big appenders (%d x %d-byte events per unary append, one call at a time each, own connections): %d appended (%.0f MiB), %d refused ResourceExhausted",
		n, bigAppendEvents, bigAppendEventBytes, a.ok.Load(), float64(a.ok.Load()*bigAppendEvents*bigAppendEventBytes)/(1<<20), a.exhausted.Load())
	if a.firstExhausted != "" {
		s += fmt.Sprintf(" (first: %q)", a.firstExhausted)
	}
	s += fmt.Sprintf(", %d other", a.other.Load())
	if a.firstOther != "" {
		s += fmt.Sprintf(" (first: %q)", a.firstOther)
	}
	return s
}
