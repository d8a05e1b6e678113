package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// natsSys is a three-node JetStream cluster with one R3 file stream,
// EVENTS, over subjects ev.<stream>. One connection carries every
// producer, as one SDK client does for tsstore.
type natsSys struct {
	nc        *nats.Conn
	js        jetstream.JetStream
	urls      string
	opTimeout time.Duration
}

const natsStream = "EVENTS"

func newNATS(ctx context.Context, urls string, opTimeout time.Duration) (*natsSys, error) {
	nc, err := nats.Connect(urls, nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond),
		nats.ReconnectBufSize(64<<20), nats.Timeout(2*time.Second))
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc, jetstream.WithDefaultTimeout(opTimeout))
	if err != nil {
		nc.Close()
		return nil, err
	}
	s := &natsSys{nc: nc, js: js, urls: urls, opTimeout: opTimeout}
	// The meta leader is elected a few seconds after the servers start.
	deadline := time.Now().Add(60 * time.Second)
	for {
		_, err = js.CreateStream(ctx, jetstream.StreamConfig{
			Name: natsStream, Subjects: []string{"ev.>"}, Storage: jetstream.FileStorage, Replicas: 3,
		})
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("create stream: %w", err)
	}
	return s, nil
}

func (s *natsSys) Close() { s.nc.Close() }

func (s *natsSys) Append(ctx context.Context, stream string, payload []byte) error {
	ctx, cancel := context.WithTimeout(ctx, s.opTimeout)
	defer cancel()
	_, err := s.js.Publish(ctx, "ev."+stream, payload, jetstream.WithRetryWait(10*time.Millisecond), jetstream.WithRetryAttempts(1000))
	return err
}

// Pipelined publishes asynchronously from one goroutine; PublishAsync
// blocks once window acks are pending. Latency runs from the publish call
// returning to the ack.
func (s *natsSys) Pipelined(ctx context.Context, d time.Duration, window int, payload []byte) (int, []time.Duration, string, error) {
	n, lats, errs, err := s.publishAsync(ctx, window, payload, func(i int) (string, bool) {
		return "ev.pipe", i >= 0
	}, d)
	how := fmt.Sprintf("PublishAsync, window %d pending acks", window)
	if errs > 0 {
		how += fmt.Sprintf("; %d failed", errs)
	}
	return n, lats, how, err
}

// publishAsync publishes subject(i) for i = 0, 1, ... until it says stop
// or d passes (d = 0: no limit), then waits for every ack.
func (s *natsSys) publishAsync(ctx context.Context, window int, payload []byte, subject func(int) (string, bool), d time.Duration) (int, []time.Duration, int, error) {
	js, err := jetstream.New(s.nc, jetstream.WithPublishAsyncMaxPending(window), jetstream.WithPublishAsyncTimeout(30*time.Second))
	if err != nil {
		return 0, nil, 0, err
	}
	type pend struct {
		f jetstream.PubAckFuture
		t time.Time
	}
	ch := make(chan pend, window)
	var lats []time.Duration
	var errs int
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for p := range ch {
			select {
			case <-p.f.Ok():
				lats = append(lats, time.Since(p.t))
			case <-p.f.Err():
				errs++
			}
		}
	}()
	var end time.Time
	if d > 0 {
		end = time.Now().Add(d)
	}
	for i := 0; ctx.Err() == nil; i++ {
		if !end.IsZero() && i%64 == 0 && time.Now().After(end) {
			break
		}
		subj, ok := subject(i)
		if !ok {
			break
		}
		// A full window blocks the publisher until acks free it (the
		// default stall wait of 200 ms would fail the publish instead).
		f, perr := js.PublishAsync(subj, payload, jetstream.WithStallWait(time.Minute))
		if perr != nil {
			err = perr
			break
		}
		ch <- pend{f, time.Now()}
	}
	close(ch)
	wg.Wait()
	if err == nil && errs > 0 && d == 0 {
		err = fmt.Errorf("%d async publishes failed", errs)
	}
	return len(lats), lats, errs, err
}

func (s *natsSys) Load(ctx context.Context, n, every int, payload []byte) error {
	_, _, _, err := s.publishAsync(ctx, 4096, payload, func(i int) (string, bool) {
		return "ev." + loadStream(i, every), i < n
	}, 0)
	return err
}

func (s *natsSys) Methods() []string { return []string{"ordered", "fetch"} }

func (s *natsSys) ReplayAll(ctx context.Context, method string, want int, yield func(int)) (string, error) {
	return s.replay(ctx, method, nil, want, yield)
}

func (s *natsSys) ReplayStream(ctx context.Context, method string, want int, yield func(int)) (string, error) {
	return s.replay(ctx, method, []string{"ev." + targetStream}, want, yield)
}

// Replay tuning, set by flags.
var (
	natsConsumeBuffer = 10000 // messages an ordered consumer buffers
	natsFetchBatch    = 10000 // messages per Fetch
)

func (s *natsSys) replay(ctx context.Context, method string, filter []string, want int, yield func(int)) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Minute)
	defer cancel()
	what := "all subjects"
	if filter != nil {
		what = "subject filter " + strings.Join(filter, ",")
	}
	switch method {
	case "ordered":
		c, err := s.js.OrderedConsumer(ctx, natsStream, jetstream.OrderedConsumerConfig{FilterSubjects: filter, DeliverPolicy: jetstream.DeliverAllPolicy})
		if err != nil {
			return "", err
		}
		got := 0
		done := make(chan struct{})
		cc, err := c.Consume(func(m jetstream.Msg) {
			if got < want {
				yield(len(m.Data()))
				got++
				if got == want {
					close(done)
				}
			}
		}, jetstream.PullMaxMessages(natsConsumeBuffer))
		if err != nil {
			return "", err
		}
		defer cc.Stop()
		select {
		case <-done:
		case <-ctx.Done():
			return "", fmt.Errorf("ordered consumer: %d of %d: %w", got, want, ctx.Err())
		}
		return fmt.Sprintf("ordered consumer (%s), Consume buffering %d msgs", what, natsConsumeBuffer), nil
	case "fetch":
		cfg := jetstream.ConsumerConfig{AckPolicy: jetstream.AckNonePolicy, DeliverPolicy: jetstream.DeliverAllPolicy,
			InactiveThreshold: time.Minute, MemoryStorage: true}
		if filter != nil {
			cfg.FilterSubjects = filter
		}
		c, err := s.js.CreateConsumer(ctx, natsStream, cfg)
		if err != nil {
			return "", err
		}
		defer s.js.DeleteConsumer(context.Background(), natsStream, c.CachedInfo().Name)
		got := 0
		for got < want {
			b, err := c.Fetch(min(natsFetchBatch, want-got), jetstream.FetchMaxWait(5*time.Second))
			if errors.Is(err, nats.ErrNoResponders) && ctx.Err() == nil {
				// The new consumer is not serving yet.
				time.Sleep(10 * time.Millisecond)
				continue
			}
			if err != nil {
				return "", err
			}
			for m := range b.Messages() {
				yield(len(m.Data()))
				got++
			}
			if err := b.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
				return "", err
			}
			if ctx.Err() != nil {
				return "", ctx.Err()
			}
		}
		return fmt.Sprintf("ephemeral pull consumer (%s, AckNone), Fetch batches of %d", what, natsFetchBatch), nil
	}
	return "", fmt.Errorf("unknown NATS replay method %q", method)
}

// Leader is the EVENTS stream's Raft leader: the server that orders and
// acknowledges its writes.
func (s *natsSys) Leader(ctx context.Context) (string, error) {
	st, err := s.js.Stream(ctx, natsStream)
	if err != nil {
		return "", err
	}
	info, err := st.Info(ctx)
	if err != nil {
		return "", err
	}
	if info.Cluster == nil || info.Cluster.Leader == "" {
		return "", errors.New("EVENTS has no leader")
	}
	return info.Cluster.Leader, nil
}

// RaftDir: JetStream keeps Raft logs of the meta group and of every
// stream and consumer under jetstream/$SYS/_js_/; the stream's messages
// are under jetstream/$G/streams/EVENTS/.
func (s *natsSys) RaftDir(rel string) bool { return strings.Contains(rel, "/_js_/") }

func (s *natsSys) LeaderKind() string { return "EVENTS stream's Raft leader" }
