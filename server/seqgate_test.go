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
	g.enter(ctx, "p", 1) // unknown producer: passes
	g.pass("p", 1, 10)   // next is 11
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
			g.pass("p", seq, 10)
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
	g.pass("p", 11, 10)
	mu.Unlock()
	wg.Wait()
	want := []uint64{11, 21, 31, 41}
	for i := range want {
		if order[i] != want[i] {
			t.Fatalf("passed in order %v, want %v", order, want)
		}
	}
	// A request let through out of order does not move the chain on.
	g.pass("p", 61, 10)
	g.mu.Lock()
	next := g.mu.next["p"]
	g.mu.Unlock()
	if next != 51 {
		t.Fatalf("next %d after an out-of-order pass, want 51", next)
	}
}
