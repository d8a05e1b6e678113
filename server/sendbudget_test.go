package server

import (
	"context"
	"testing"
	"time"
)

// The stall cut's test of one connection's budget: a connection whose
// reader holds its last message while waiting for the node's budget is
// not stalled; one whose own budget is spent and does not move is, and so
// is one with a stream blocked in Send.
func TestConnBudgetStalled(t *testing.T) {
	const mib = 1 << 20
	ctx := context.Background()
	later := func(b *byteBudget) time.Time { return b.moved.Add(5 * time.Second) }

	waiting := newByteBudget(8 * mib)
	if err := waiting.acquire(ctx, mib); err != nil {
		t.Fatal(err)
	}
	if waiting.stalled(later(waiting), 2*time.Second, mib) {
		t.Fatal("a connection holding 1 of its 8 MiB is stalled")
	}

	spent := newByteBudget(8 * mib)
	if err := spent.acquire(ctx, 8*mib); err != nil {
		t.Fatal(err)
	}
	if spent.stalled(spent.moved.Add(time.Second), 2*time.Second, mib) {
		t.Fatal("stalled before the timeout")
	}
	if !spent.stalled(later(spent), 2*time.Second, mib) {
		t.Fatal("a connection whose budget is spent and does not move is not stalled")
	}
	spent.release(mib)
	if spent.stalled(spent.moved.Add(time.Second), 2*time.Second, mib) {
		t.Fatal("stalled right after bytes came back")
	}

	sending := newByteBudget(8 * mib)
	s := &sendBudget{conn: sending, node: newByteBudget(32 * mib)}
	if err := s.take(ctx, mib); err != nil {
		t.Fatal(err)
	}
	s.sending(true)
	since := sending.sending[s]
	if !sending.stalled(since.Add(3*time.Second), 2*time.Second, mib) {
		t.Fatal("a stream in Send for 3 s does not make its connection stalled")
	}
	s.sending(false)
	if sending.stalled(since.Add(3*time.Second), 2*time.Second, mib) {
		t.Fatal("stalled after the stream returned from Send")
	}
}

// A request larger than the budget waits for all of it, then takes it
// and more, and the budget is whole again once it is given back.
func TestByteBudgetOversized(t *testing.T) {
	b := newByteBudget(4)
	ctx := context.Background()
	if err := b.acquire(ctx, 1); err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() { got <- b.acquire(ctx, 6) }()
	select {
	case err := <-got:
		t.Fatalf("took 6 of 4 while 1 was held: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	b.release(1)
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	if b.avail != -2 {
		t.Fatalf("avail %d after taking 6 of 4, want -2", b.avail)
	}
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if err := b.acquire(short, 1); err == nil {
		t.Fatal("took 1 while the budget was overdrawn")
	}
	b.release(6)
	if b.avail != 4 || b.waiting != 0 {
		t.Fatalf("avail %d, %d waiting after everything came back; want 4, 0", b.avail, b.waiting)
	}
}
