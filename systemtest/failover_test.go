package systemtest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/tsstore/tsstore/client"
)

type ack struct {
	offset  uint64
	payload string
}

// TestLeaderKilledUnderLoad: 4 producers append 10,000 events each while the
// leader is SIGKILLed and restarted, twice. Every acknowledged event must be
// present exactly once, at its acknowledged offset, offsets must be
// contiguous from 0, and the three replicas' logs identical byte for byte.
func TestLeaderKilledUnderLoad(t *testing.T) {
	c := startCluster(t)
	const producers, perProducer = 4, 10000

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	var (
		mu       sync.Mutex
		acks     []ack
		progress sync.WaitGroup
		done     = make(chan struct{})
		errs     = make(chan error, producers)
	)
	var appended [producers]int
	for p := range producers {
		progress.Add(1)
		go func() {
			defer progress.Done()
			cfg := client.DefaultConfig()
			cfg.Addrs = c.APIAddrs()
			cl, err := client.New(cfg)
			if err != nil {
				errs <- err
				return
			}
			defer cl.Close()
			prod := cl.NewProducer(fmt.Sprintf("producer-%d", p))
			rng := rand.New(rand.NewPCG(uint64(p), 42))
			for i := 0; i < perProducer; {
				n := min(1+rng.IntN(20), perProducer-i)
				evs := make([]client.Event, n)
				for j := range evs {
					evs[j] = client.Event{Stream: fmt.Sprintf("run/p%d", p), Type: "BatchCompleted",
						Payload: fmt.Appendf(nil, "p%d-%d", p, i+j)}
				}
				var res client.AppendResult
				for {
					res, err = prod.Append(ctx, evs...)
					if err == nil || ctx.Err() != nil {
						break
					}
					// The SDK already retried; the same events again are
					// safe because the producer sequence is unchanged.
					t.Logf("producer %d: append failed, retrying the same events: %v", p, err)
				}
				if err != nil {
					errs <- fmt.Errorf("producer %d: %w", p, err)
					return
				}
				if res.LastOffset-res.FirstOffset+1 != uint64(n) {
					errs <- fmt.Errorf("producer %d: %d events acknowledged at %d..%d", p, n, res.FirstOffset, res.LastOffset)
					return
				}
				mu.Lock()
				for j := range evs {
					acks = append(acks, ack{res.FirstOffset + uint64(j), string(evs[j].Payload)})
				}
				appended[p] = i + n
				mu.Unlock()
				i += n
			}
		}()
	}
	go func() { progress.Wait(); close(done) }()

	total := func() int {
		mu.Lock()
		defer mu.Unlock()
		s := 0
		for _, n := range appended {
			s += n
		}
		return s
	}
	for round, at := range []int{producers * perProducer / 4, producers * perProducer / 2} {
		for total() < at {
			select {
			case <-done:
				t.Fatalf("producers finished before kill %d", round)
			case err := <-errs:
				t.Fatal(err)
			case <-time.After(20 * time.Millisecond):
			}
		}
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
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatal("producers did not finish")
	}
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if len(acks) != producers*perProducer {
		t.Fatalf("%d acknowledged events, want %d", len(acks), producers*perProducer)
	}

	var maxOff uint64
	for _, a := range acks {
		maxOff = max(maxOff, a.offset)
	}
	waitCaughtUp(t, c, maxOff+1)
	var logs []rawLog
	for _, n := range c.Nodes {
		logs = append(logs, readRaw(t, n.APIAddr, maxOff+1))
	}
	for i, l := range logs {
		if l.hash != logs[0].hash {
			t.Fatalf("replica %s log hash %s differs from %s's %s", c.Nodes[i].ID, l.hash, c.Nodes[0].ID, logs[0].hash)
		}
	}
	recs := logs[0].records
	for i, r := range recs {
		if r.Offset != uint64(i) {
			t.Fatalf("record %d has offset %d: offsets not contiguous from 0", i, r.Offset)
		}
	}
	seen := map[string]int{}
	for _, r := range recs {
		seen[string(r.Payload)]++
	}
	for _, a := range acks {
		if a.offset >= uint64(len(recs)) || string(recs[a.offset].Payload) != a.payload {
			t.Fatalf("acknowledged %q at offset %d is not there", a.payload, a.offset)
		}
		if seen[a.payload] != 1 {
			t.Fatalf("acknowledged %q appears %d times", a.payload, seen[a.payload])
		}
	}
	if len(recs) != len(acks) {
		t.Fatalf("log holds %d events, %d acknowledged: unacknowledged writes present", len(recs), len(acks))
	}
	t.Logf("%d events, 3 identical replicas (sha256 %s)", len(recs), logs[0].hash[:16])
}
