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
// restart, and forgotten for a producer not seen for gateStale (its state
// may come from an earlier term of this node as leader, when the producer
// went on through another leader): its next request passes at once. A
// request held for gateHold passes anyway (the FSM then answers the gap,
// or accepts it if the gate's state was stale) and the chain continues
// after it. Retries and duplicates (sequence below the next expected)
// pass at once.
type seqGate struct {
	hold time.Duration // gateHold; tests lengthen it
	mu   struct {
		sync.Mutex
		producers map[string]gateState
		changed   chan struct{} // closed and replaced when a chain moves on
	}
}

type gateState struct {
	next uint64    // sequence after the last request let through in order
	seen time.Time // when a request of the producer last passed
}

// gateHold bounds how long a request waits for its predecessor; gateStale
// is how long the gate remembers an idle producer.
const (
	gateHold  = 200 * time.Millisecond
	gateStale = 2 * time.Second
)

// gateProducers bounds the producers remembered; past it the table is
// cleared (it is only a hint).
const gateProducers = 1 << 16

func newSeqGate() *seqGate {
	g := &seqGate{hold: gateHold}
	g.mu.producers = make(map[string]gateState)
	g.mu.changed = make(chan struct{})
	return g
}

// expectLocked returns the producer's next sequence, if it is known and
// fresh.
func (g *seqGate) expectLocked(producer string, now time.Time) (uint64, bool) {
	st, ok := g.mu.producers[producer]
	if !ok || now.Sub(st.seen) > gateStale {
		return 0, false
	}
	return st.next, true
}

// enter waits until the request with producer sequence seq may go to the
// proposer, and reports whether it stopped waiting at gateHold. Call pass
// with the same arguments once the request is queued there.
func (g *seqGate) enter(ctx context.Context, producer string, seq uint64) (forced bool) {
	if producer == "" {
		return false
	}
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		g.mu.Lock()
		next, known := g.expectLocked(producer, time.Now())
		changed := g.mu.changed
		g.mu.Unlock()
		if !known || seq <= next {
			return false
		}
		if timer == nil {
			timer = time.NewTimer(g.hold)
		}
		select {
		case <-changed:
		case <-timer.C:
			return true
		case <-ctx.Done():
			return true
		}
	}
}

// pass records that the request [seq, seq+n) was queued for proposal.
// The chain moves on when the request continues it, or when the gate had
// nothing fresh to go by or stopped waiting (forced). Requests of one
// producer pass one at a time in practice: a producer that sends two
// requests with the same sequence at once gets one of them answered as a
// duplicate by the FSM.
func (g *seqGate) pass(producer string, seq, n uint64, forced bool) {
	if producer == "" {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	now := time.Now()
	if len(g.mu.producers) >= gateProducers {
		clear(g.mu.producers)
	}
	next, known := g.expectLocked(producer, now)
	st := gateState{next: next, seen: now}
	if !known || forced || seq == next {
		st.next = seq + n
		close(g.mu.changed)
		g.mu.changed = make(chan struct{})
	}
	g.mu.producers[producer] = st
}
