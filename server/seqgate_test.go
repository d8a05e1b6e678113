package server

import (
	"context"
	"sync"
	"testing"
	"time"
)

// TestSeqGateOrdersPipelinedRequests lets requests 2..5 of a producer
// arrive before 1 (each waiting in enter) and checks they leave in
// sequence order; requests of another producer and without a producer
// are not held.
func TestSeqGateOrdersPipelinedRequests(t *testing.T) {
	g := newSeqGate()
	g.hold = time.Hour // the test decides when predecessors arrive
	ctx := context.Background()
	g.enter(ctx, "p", 1)      // unknown producer: passes
	g.pass("p", 1, 10, false) // next is 11
	var mu sync.Mutex
	var order []uint64
	var wg sync.WaitGroup
	for _, seq := range []uint64{41, 31, 21} { // each request holds 10 events
		wg.Add(1)
		go func() {
			defer wg.Done()
			g.enter(ctx, "p", seq)
			mu.Lock()
			order = append(order, seq)
			g.pass("p", seq, 10, false)
			mu.Unlock()
		}()
	}
	g.enter(ctx, "q", 99) // another producer is not held
	g.enter(ctx, "", 7)
	g.enter(ctx, "p", 5) // a retry (below next) is not held
	mu.Lock()
	if len(order) != 0 {
		mu.Unlock()
		t.Fatalf("%v passed before their predecessor", order)
	}
	order = append(order, 11)
	g.pass("p", 11, 10, false)
	mu.Unlock()
	wg.Wait()
	want := []uint64{11, 21, 31, 41}
	for i := range want {
		if order[i] != want[i] {
			t.Fatalf("passed in order %v, want %v", order, want)
		}
	}
	// A request let through out of order does not move the chain on,
	// unless the gate stopped waiting for it.
	g.pass("p", 61, 10, false)
	if next := g.next("p"); next != 51 {
		t.Fatalf("next %d after an out-of-order pass, want 51", next)
	}
	g.pass("p", 61, 10, true)
	if next := g.next("p"); next != 71 {
		t.Fatalf("next %d after a forced pass, want 71", next)
	}
	// A producer not seen for gateStale is not held: its state may be
	// from an earlier term of this node as leader.
	g.mu.Lock()
	st := g.mu.producers["p"]
	st.seen = st.seen.Add(-2 * gateStale)
	g.mu.producers["p"] = st
	g.mu.Unlock()
	if g.enter(ctx, "p", 500) {
		t.Fatal("a stale producer was held")
	}
	g.pass("p", 500, 10, false)
	if next := g.next("p"); next != 510 {
		t.Fatalf("next %d after a stale pass, want 510", next)
	}
}

func (g *seqGate) next(producer string) uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.mu.producers[producer].next
}
