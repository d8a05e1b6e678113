package systemtest

import (
	"context"
	"testing"
	"time"
)

// TestLeaderKilledUnderLoad: 4 producers append 10,000 events each while the
// leader is SIGKILLed and restarted, twice. Every acknowledged event must be
// present exactly once, at its acknowledged offset, offsets must be
// contiguous from 0, and the three replicas' logs identical byte for byte.
func TestLeaderKilledUnderLoad(t *testing.T) {
	c := startCluster(t)
	const producers, perProducer = 4, 10000

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	l := startLoad(t, ctx, c.APIAddrs(), "p", producers, perProducer, 20)
	for round, at := range []int{producers * perProducer / 4, producers * perProducer / 2} {
		l.waitAcked(at)
		leader := waitLeader(t, c)
		killedAt := time.Now()
		if err := leader.Kill(); err != nil {
			t.Fatal(err)
		}
		next := waitLeader(t, c)
		t.Logf("kill %d: %s killed at %d events; %s leads after %v", round+1, leader.ID, at, next.ID, time.Since(killedAt))
		if err := leader.Start(); err != nil {
			t.Fatal(err)
		}
	}
	acks := l.finish()
	if len(acks) != producers*perProducer {
		t.Fatalf("%d acknowledged events, want %d", len(acks), producers*perProducer)
	}
	checkReplicas(t, c.Nodes, acks)
}
