package systemtest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/tsstore/tsstore/client"
	"github.com/tsstore/tsstore/internal/proccluster"
)

// ack is one acknowledged event: where the cluster said it is, and what.
type ack struct {
	offset  uint64
	payload string
}

// load is SDK producers appending while a test breaks the cluster. Each
// producer appends batches of 1..maxBatch events to its own stream
// ("run/<name><p>", payloads "<name><p>-<i>", unique), retries a failed
// append with the same events (safe: the producer sequence is unchanged,
// so a retry of a committed append is answered as a duplicate), and
// records every acknowledged event.
type load struct {
	t    *testing.T
	ctx  context.Context
	mu   sync.Mutex
	acks []ack
	errs chan error
	stop chan struct{}
	done chan struct{} // closed when every producer has returned
	// bounded: producers stop by themselves after perProducer events.
	bounded bool
}

// startLoad starts producers against addrs; each stops after perProducer
// events, or with stop when perProducer is 0.
func startLoad(t *testing.T, ctx context.Context, addrs []string, name string, producers, perProducer, maxBatch int) *load {
	l := &load{t: t, ctx: ctx, errs: make(chan error, producers), stop: make(chan struct{}), done: make(chan struct{}), bounded: perProducer > 0}
	var wg sync.WaitGroup
	for p := range producers {
		wg.Go(func() {
			if err := l.produce(addrs, name, p, perProducer, maxBatch); err != nil {
				l.errs <- fmt.Errorf("producer %d: %w", p, err)
			}
		})
	}
	go func() { wg.Wait(); close(l.done) }()
	return l
}

func (l *load) produce(addrs []string, name string, p, perProducer, maxBatch int) error {
	cfg := client.DefaultConfig()
	cfg.Addrs = addrs
	cl, err := client.New(cfg)
	if err != nil {
		return err
	}
	defer cl.Close()
	prod := cl.NewProducer(fmt.Sprintf("%s-producer-%d", name, p))
	rng := rand.New(rand.NewPCG(uint64(p), 42))
	for i := 0; perProducer == 0 || i < perProducer; {
		select {
		case <-l.stop:
			return nil
		default:
		}
		n := 1 + rng.IntN(maxBatch)
		if perProducer > 0 {
			n = min(n, perProducer-i)
		}
		evs := make([]client.Event, n)
		for j := range evs {
			evs[j] = client.Event{Stream: fmt.Sprintf("run/%s%d", name, p), Type: "BatchCompleted",
				Payload: fmt.Appendf(nil, "%s%d-%d", name, p, i+j)}
		}
		var res client.AppendResult
		for {
			res, err = prod.Append(l.ctx, evs...)
			if err == nil || l.ctx.Err() != nil {
				break
			}
			l.t.Logf("producer %d: append failed, retrying the same events: %v", p, err)
		}
		if err != nil {
			return err
		}
		if res.LastOffset-res.FirstOffset+1 != uint64(n) {
			return fmt.Errorf("%d events acknowledged at %d..%d", n, res.FirstOffset, res.LastOffset)
		}
		l.mu.Lock()
		for j := range evs {
			l.acks = append(l.acks, ack{res.FirstOffset + uint64(j), string(evs[j].Payload)})
		}
		l.mu.Unlock()
		i += n
	}
	return nil
}

// acked is how many events have been acknowledged so far.
func (l *load) acked() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.acks)
}

// waitAcked waits until n events are acknowledged; a producer error, the
// producers finishing first or the context ending fail the test.
func (l *load) waitAcked(n int) {
	l.t.Helper()
	for l.acked() < n {
		select {
		case err := <-l.errs:
			l.t.Fatal(err)
		case <-l.done:
			if l.acked() < n {
				l.t.Fatalf("producers finished at %d acknowledged events, before %d", l.acked(), n)
			}
		case <-l.ctx.Done():
			l.t.Fatalf("producers stalled at %d acknowledged events, waiting for %d", l.acked(), n)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// finish stops the producers (bounded ones: waits for them to reach
// perProducer), fails the test on any producer error, and returns every
// acknowledgement.
func (l *load) finish() []ack {
	l.t.Helper()
	if !l.bounded {
		close(l.stop)
	}
	select {
	case <-l.done:
	case <-l.ctx.Done():
		l.t.Fatal("producers did not finish")
	}
	close(l.errs)
	for err := range l.errs {
		l.t.Fatal(err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]ack(nil), l.acks...)
}

// checkReplicas: every acknowledged event is present exactly once at its
// offset, offsets are contiguous from 0, nothing unacknowledged is in the
// log, and the nodes' logs are identical byte for byte.
func checkReplicas(t *testing.T, nodes []*proccluster.Node, acks []ack) {
	t.Helper()
	var maxOff uint64
	for _, a := range acks {
		maxOff = max(maxOff, a.offset)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, n := range nodes {
		for {
			st, err := n.Status(ctx)
			if err == nil && st.NextOffset >= maxOff+1 {
				break
			}
			select {
			case <-ctx.Done():
				t.Fatalf("node %s did not reach offset %d: %v %v", n.ID, maxOff+1, st, err)
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	var logs []rawLog
	for _, n := range nodes {
		logs = append(logs, readRaw(t, n.APIAddr, maxOff+1))
	}
	for i, l := range logs {
		if l.hash != logs[0].hash {
			t.Fatalf("replica %s log hash %s differs from %s's %s", nodes[i].ID, l.hash, nodes[0].ID, logs[0].hash)
		}
	}
	recs := logs[0].records
	seen := map[string]int{}
	for i, r := range recs {
		if r.Offset != uint64(i) {
			t.Fatalf("record %d has offset %d: offsets not contiguous from 0", i, r.Offset)
		}
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
	var ids []string
	for _, n := range nodes {
		ids = append(ids, n.ID)
	}
	t.Logf("%d events, identical replicas on %v (sha256 %s)", len(recs), ids, logs[0].hash[:16])
}
