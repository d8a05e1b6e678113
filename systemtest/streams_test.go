package systemtest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/tsstore/tsstore/client"
	"github.com/tsstore/tsstore/internal/proccluster"
)

func newClient(t *testing.T, addrs []string) *client.Client {
	t.Helper()
	cfg := client.DefaultConfig()
	cfg.Addrs = addrs
	cl, err := client.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

// TestRacingWritersWithExactVersions: two writers append to one stream,
// each expecting the version it last saw. For every version exactly one
// wins; the loser is told the actual version and retries from it.
func TestRacingWritersWithExactVersions(t *testing.T) {
	c := startCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const rounds = 150
	var mu sync.Mutex
	winners := map[uint64]string{} // version -> writer
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cl := newClient(t, c.APIAddrs())
			p := cl.NewProducer(fmt.Sprintf("writer-%d", w))
			seen := uint64(0)
			for wins := 0; wins < rounds; {
				ev := client.Event{Stream: "run/race", Type: "WeightUpdateApplied", Payload: fmt.Appendf(nil, "w%d-%d", w, seen)}
				res, err := p.AppendWith(ctx, []client.Event{ev}, client.WithExpectedVersion("run/race", client.Exact(seen)))
				var wev *client.WrongExpectedVersionError
				switch {
				case err == nil:
					v := res.StreamVersions["run/race"]
					if v != seen+1 {
						errs <- fmt.Errorf("writer %d expected %d and wrote version %d", w, seen, v)
						return
					}
					mu.Lock()
					if other, dup := winners[v]; dup {
						mu.Unlock()
						errs <- fmt.Errorf("version %d won by both %s and writer-%d", v, other, w)
						return
					}
					winners[v] = fmt.Sprint("writer-", w)
					mu.Unlock()
					seen, wins = v, wins+1
				case errors.As(err, &wev):
					if wev.Actual <= seen {
						errs <- fmt.Errorf("writer %d expected %d, told actual %d", w, seen, wev.Actual)
						return
					}
					seen = wev.Actual
				default:
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	cl := newClient(t, c.APIAddrs())
	var version uint64
	for ev, err := range cl.Replay(ctx, 0, client.Stream("run/race"), client.Linearizable()) {
		if err != nil {
			t.Fatal(err)
		}
		version++
		if ev.StreamVersion != version || winners[version] == "" {
			t.Fatalf("stream event %+v: version %d, winner %q", ev, version, winners[version])
		}
	}
	if version != uint64(len(winners)) || version < 2*rounds {
		t.Fatalf("stream holds %d versions, %d winners recorded", version, len(winners))
	}
}

// TestAtomicMultiStreamAppendAcrossLeaderKill: every append writes an
// epoch_number event and a batch_count event to two streams together. With
// the leader SIGKILLed mid-run, each pair must be fully present or fully
// absent on every node, never half-applied.
func TestAtomicMultiStreamAppendAcrossLeaderKill(t *testing.T) {
	c := startCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cl := newClient(t, c.APIAddrs())
	p := cl.NewProducer("epoch-writer")
	acked := map[int]bool{}
	killed := false
	var restart *proccluster.Node
	for i := 0; i < 600; i++ {
		evs := []client.Event{
			{Stream: "run/epochs", Type: "EpochStarted", Payload: fmt.Appendf(nil, "epoch_number=%d", i)},
			{Stream: "run/batches", Type: "BatchCompleted", Payload: fmt.Appendf(nil, "batch_count=%d", i)},
		}
		// A short deadline makes some appends end in doubt around the kill:
		// their pair may or may not be in the log, but never half of it.
		actx, acancel := context.WithTimeout(ctx, 300*time.Millisecond)
		_, err := p.Append(actx, evs...)
		acancel()
		if err == nil {
			acked[i] = true
		}
		if i == 200 && !killed {
			leader := waitLeader(t, c)
			leader.Kill()
			killed = true
			restart = leader
		}
		if i == 300 && restart != nil {
			// Back in the cluster while appends go on; started here, not
			// from a goroutine that could outlive the test's cleanup.
			if err := restart.Start(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if len(acked) < 300 {
		t.Fatalf("only %d of 600 appends acknowledged", len(acked))
	}
	waitLeader(t, c)
	// Settle the last in-doubt append, if any, with one more append.
	last, err := p.Append(ctx, client.Event{Stream: "run/done", Type: "TrainingFinished"})
	if err != nil {
		t.Fatal(err)
	}
	waitCaughtUp(t, c, last.LastOffset+1)
	for _, n := range c.Nodes {
		log := readRaw(t, n.APIAddr, last.LastOffset+1)
		epochs, batches := map[string]uint64{}, map[string]uint64{}
		for _, r := range log.records {
			var i int
			switch string(r.Stream) {
			case "run/epochs":
				fmt.Sscanf(string(r.Payload), "epoch_number=%d", &i)
				epochs[fmt.Sprint(i)] = r.Offset
			case "run/batches":
				fmt.Sscanf(string(r.Payload), "batch_count=%d", &i)
				batches[fmt.Sprint(i)] = r.Offset
			}
		}
		for i := range 600 {
			k := fmt.Sprint(i)
			e, okE := epochs[k]
			b, okB := batches[k]
			if okE != okB {
				t.Fatalf("node %s: pair %d half-applied (epoch %v, batch %v)", n.ID, i, okE, okB)
			}
			if okE && b != e+1 {
				t.Fatalf("node %s: pair %d at offsets %d and %d, not adjacent", n.ID, i, e, b)
			}
			if acked[i] && !okE {
				t.Fatalf("node %s: acknowledged pair %d missing", n.ID, i)
			}
		}
		if len(epochs) < len(acked) {
			t.Fatalf("node %s: %d pairs, %d acknowledged", n.ID, len(epochs), len(acked))
		}
	}
}

// TestSubscriptionSpansLeaderKill: a live subscription keeps delivering
// every committed event exactly once, in order, while the leader is
// SIGKILLed and restarted. The subscriber knows the leader and one
// follower; the SDK picks either, so if the leader kill did not cut the
// subscription, the follower it reads from is killed too.
func TestSubscriptionSpansLeaderKill(t *testing.T) {
	c := startCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	leader := waitLeader(t, c)
	other := c.Nodes[0]
	if other == leader {
		other = c.Nodes[1]
	}
	sub := newClient(t, []string{leader.APIAddr, other.APIAddr})
	subCtx, stopSub := context.WithCancel(ctx)
	defer stopSub()
	got := make(chan uint64, 10000)
	subErr := make(chan error, 1)
	go func() {
		for ev, err := range sub.Subscribe(subCtx, 0, client.Stream("run/sub")) {
			if err != nil {
				subErr <- err
				return
			}
			got <- ev.StreamVersion
		}
	}()
	p := newClient(t, c.APIAddrs()).NewProducer("sub-writer")
	const total = 1600
	for i := range total {
		if _, err := p.Append(ctx, client.Event{Stream: "run/sub", Type: "BatchCompleted", Payload: fmt.Appendf(nil, "%d", i)}); err != nil {
			t.Fatal(err)
		}
		switch i {
		case total / 4:
			leader.Kill()
			t.Logf("killed leader %s at event %d", leader.ID, i)
		case total / 2:
			leader.Start()
			waitLeader(t, c)
			if sub.Stats().ReadResumes == 0 {
				other.Kill()
				t.Logf("subscription was on %s; killed it at event %d", other.ID, i)
			}
		case 3 * total / 4:
			if !other.Running() {
				other.Start()
			}
		}
	}
	for want := uint64(1); want <= total; want++ {
		select {
		case v := <-got:
			if v != want {
				t.Fatalf("subscription delivered version %d, want %d", v, want)
			}
		case err := <-subErr:
			t.Fatalf("subscription ended: %v", err)
		case <-ctx.Done():
			t.Fatalf("subscription stalled at version %d", want-1)
		}
	}
	select {
	case v := <-got:
		t.Fatalf("extra event with version %d", v)
	case <-time.After(500 * time.Millisecond):
	}
	if s := sub.Stats(); s.ReadResumes == 0 {
		t.Fatal("the subscription was never resumed: no kill cut it")
	}
}
