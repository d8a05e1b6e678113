package server

import (
	"context"
	"sync"
	"time"
)

// seqGate lets a producer's pipelined requests into the proposer in
// producer-sequence order. A pipelining producer (client.AsyncProducer)
// sends request k+1 before k is answered; on one HTTP/2 connection their
// frames interleave, so a smaller k+1 can arrive whole before k, and the
// FSM would reject it as a sequence gap. The gate holds a request whose
// sequence is ahead of the next one this leader has let through for its
// producer until the predecessor passes, for at most gateHold.
//
// It is only a hint: the FSM decides. What the gate remembers is lost on
// restart or leader change (the first request of a producer passes), a
// request held for gateHold passes anyway (the FSM then answers the gap),
// and retries and duplicates (sequence below the next expected) pass at
// once.
type seqGate struct {
	hold time.Duration // gateHold; tests lengthen it
	mu   struct {
		sync.Mutex
		next    map[string]uint64 // producer -> sequence after the last request let through
		changed chan struct{}     // closed and replaced when next changes
	}
}

// gateHold bounds how long a request waits for its predecessor.
const gateHold = 200 * time.Millisecond

// gateProducers bounds the producers remembered; past it the table is
// cleared (it is only a hint).
const gateProducers = 1 << 16

func newSeqGate() *seqGate {
	g := &seqGate{hold: gateHold}
	g.mu.next = make(map[string]uint64)
	g.mu.changed = make(chan struct{})
	return g
}

// enter waits until the request with producer sequence seq may go to the
// proposer. Call pass with the same arguments once it is queued there.
func (g *seqGate) enter(ctx context.Context, producer string, seq uint64) {
	if producer == "" {
		return
	}
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		g.mu.Lock()
		next, known := g.mu.next[producer]
		changed := g.mu.changed
		g.mu.Unlock()
		if !known || seq <= next {
			return
		}
		if timer == nil {
			timer = time.NewTimer(g.hold)
		}
		select {
		case <-changed:
		case <-timer.C:
			return
		case <-ctx.Done():
			return
		}
	}
}

// pass records that the request [seq, seq+n) was queued for proposal.
// Requests of one producer pass one at a time in practice: a producer
// that sends two requests with the same sequence at once gets one of
// them answered as a duplicate by the FSM.
func (g *seqGate) pass(producer string, seq, n uint64) {
	if producer == "" {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.mu.next) >= gateProducers {
		clear(g.mu.next)
	}
	// Only a request that continues the chain moves it on: one let through
	// after gateHold is ahead of it and will be a gap, and its re-send
	// must again wait for its predecessor.
	if next, known := g.mu.next[producer]; !known || seq == next {
		g.mu.next[producer] = seq + n
		close(g.mu.changed)
		g.mu.changed = make(chan struct{})
	}
}
