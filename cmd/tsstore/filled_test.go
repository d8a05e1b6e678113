package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/tsstore/tsstore/client"
	"github.com/tsstore/tsstore/internal/storetest"
	"github.com/tsstore/tsstore/server"
)

// startFilled starts an in-process cluster of n nodes with 64 KiB
// segments (tweak may change more), appends 40 batches of ten 400-byte
// events to "run/r" as producer, and returns once every node holds them,
// with a context that ends with the test (at most a minute).
func startFilled(t *testing.T, n int, producer string, tweak func(*server.Config)) (*storetest.Cluster, context.Context) {
	t.Helper()
	tc := storetest.StartWith(t, n, func(c *server.Config) {
		c.Segment.SegmentBytes = 64 << 10
		if tweak != nil {
			tweak(c)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	p := tc.Client.NewProducer(producer)
	var last uint64
	for i := range 40 {
		var evs []client.Event
		for range 10 {
			evs = append(evs, client.Event{Stream: "run/r", Type: "Step", Payload: []byte(strings.Repeat("x", 400))})
		}
		res, err := p.Append(ctx, evs...)
		if err != nil {
			t.Fatalf("append %d: %v", i, err)
		}
		last = res.LastOffset
	}
	for _, n := range tc.Nodes {
		if err := n.Processor().WaitNextOffset(ctx, last+1); err != nil {
			t.Fatal(err)
		}
	}
	return tc, ctx
}
