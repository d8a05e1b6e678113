package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"os/signal"
	"time"

	"github.com/tsstore/tsstore/client"
	"github.com/tsstore/tsstore/client/train"
)

// The examples dial the API ports of `tsstore dev` (a local three-node
// cluster: `go run ./cmd/tsstore dev`). They are compiled with the tests
// and shown by `go doc`; they have no Output comment because they need
// that cluster, so `go test` does not run them.

// New connects to any nodes of a cluster; the leader is found from them.
// A Producer appends idempotently: a retry after an unknown outcome
// commits the events at most once.
func ExampleNew() {
	c, err := client.New(client.DefaultConfig("127.0.0.1:7201", "127.0.0.1:7202", "127.0.0.1:7203"))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p := c.NewProducer("") // a random unique producer id
	res, err := p.Append(ctx,
		client.Event{Stream: "run/bert-42", Type: "EpochStarted", Payload: []byte(`{"epoch":1}`)},
		client.Event{Stream: "run/bert-42", Type: "BatchCompleted", Payload: []byte(`{"batch":1,"loss":2.31}`)})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("appended at offsets %d..%d (raft index %d)\n", res.FirstOffset, res.LastOffset, res.RaftIndex)
}

// Replay reads the stored log from an offset and ends at its end. The
// options select a stream from a version and event types.
func ExampleClient_Replay() {
	c, err := client.New(client.DefaultConfig("127.0.0.1:7201", "127.0.0.1:7202", "127.0.0.1:7203"))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	ctx := context.Background()
	for ev, err := range c.Replay(ctx, 0, client.Stream("run/bert-42"), client.FromVersion(1), client.EventTypes("BatchCompleted")) {
		if errors.Is(err, client.ErrStreamNotFound) {
			fmt.Println("no events in run/bert-42 yet")
			return
		}
		if err != nil {
			log.Fatal(err) // *client.StreamGapError, ErrCorruption, ...
		}
		fmt.Println(ev.Offset, ev.StreamVersion, ev.Type, string(ev.Payload))
	}
}

// Subscribe replays and then follows the log: every selected event is
// yielded as it commits, without a gap or duplicate, until ctx ends.
func ExampleClient_Subscribe() {
	c, err := client.New(client.DefaultConfig("127.0.0.1:7201", "127.0.0.1:7202", "127.0.0.1:7203"))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt) // until Ctrl-C
	defer stop()
	for ev, err := range c.Subscribe(ctx, 0, client.StreamPrefix("run/")) {
		if errors.Is(err, context.Canceled) {
			return
		}
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(ev.Offset, ev.Stream, ev.Type)
	}
}

// A restarted job attempt fences the older ones with StartRun, finds
// where to continue with ResumeRun, and appends with its generation; a
// zombie of an older attempt gets ErrFenced and writes nothing.
func ExampleClient_StartRun() {
	c, err := client.New(client.DefaultConfig("127.0.0.1:7201", "127.0.0.1:7202", "127.0.0.1:7203"))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	ctx := context.Background()
	const run = "resnet50-7"
	gen, err := c.StartRun(ctx, run, "attempt 3: node 4 failed")
	if err != nil {
		log.Fatal(err)
	}
	r, err := c.ResumeRun(ctx, run)
	if err != nil {
		log.Fatal(err)
	}
	if r.Checkpoint != nil {
		for _, f := range r.Checkpoint.Files {
			fmt.Printf("rank %d: load %s (step %d)\n", f.Rank, f.URI, r.Checkpoint.Step)
		}
	}
	p := c.NewProducer("")
	p.SetRunGeneration(gen)
	ev, err := client.TrainEvent(run, train.BatchCompleted{Rank: 0, Step: r.NextStep, Loss: 0.41})
	if err != nil {
		log.Fatal(err)
	}
	if _, err := p.Append(ctx, ev); errors.Is(err, client.ErrFenced) {
		log.Fatal("a newer attempt started: stop") // this process is a zombie
	} else if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("generation %d continues at step %d\n", gen, r.NextStep)
}
