package server

import (
	"fmt"
	"strings"
	"testing"

	"github.com/tsstore/tsstore/client"
	"github.com/tsstore/tsstore/record"
	"github.com/tsstore/tsstore/segment"
)

// With compression "zstd" the leader's entries are stored compressed on
// every replica (the same bytes), and the SDK replays them, whole or
// filtered by the server, as if they were not.
func TestCompressedCluster(t *testing.T) {
	tc := newTestCluster(t, 3, func(c *Config) { c.Compression = "zstd"; c.Segment.SegmentBytes = 64 << 10 })
	c := sdk(t, tc)
	ctx := ctxT(t)
	p := c.NewProducer("zstd")
	const n = 60
	for i := range n {
		var evs []client.Event
		for j := range 10 {
			typ := "BatchCompleted"
			if j == 9 {
				typ = "CheckpointSaved"
			}
			evs = append(evs, client.Event{Stream: fmt.Sprint("run/", i%2), Type: typ,
				Payload: fmt.Appendf(nil, `{"step":%d,"loss":%.4f,"tokens":524288,"pad":%q}`, i*10+j, 3-float64(i)/50, strings.Repeat("ab", 40))})
		}
		if _, err := p.Append(ctx, evs...); err != nil {
			t.Fatal(err)
		}
	}
	waitNextOffset(t, tc.nodes, n*10)
	got := 0
	for ev, err := range c.Replay(ctx, 0, client.To(n*10)) {
		if err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf(`{"step":%d,`, ev.Offset); !strings.HasPrefix(string(ev.Payload), want) {
			t.Fatalf("offset %d: %q", ev.Offset, ev.Payload)
		}
		got++
	}
	if got != n*10 {
		t.Fatalf("replayed %d events, want %d", got, n*10)
	}
	checkpoints := 0
	for ev, err := range c.Replay(ctx, 0, client.To(n*10), client.EventTypes("CheckpointSaved")) {
		if err != nil {
			t.Fatal(err)
		}
		if ev.Type != "CheckpointSaved" || ev.Offset%10 != 9 {
			t.Fatalf("filtered replay gave %s at %d", ev.Type, ev.Offset)
		}
		checkpoints++
	}
	if checkpoints != n {
		t.Fatalf("%d checkpoints, want %d", checkpoints, n)
	}
	// On disk: compressed batches, the same bytes on every node.
	var first []byte
	for _, node := range tc.nodes {
		var raw []byte
		if err := node.proc.WithLog(func(l *segment.Log) error {
			var err error
			raw, _, err = l.ReadBatches(nil, 0, 64<<20)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		compressed := 0
		for rest := raw; len(rest) > 0; {
			b, r, err := record.Next(rest)
			if err != nil {
				t.Fatal(err)
			}
			if b.Header().Compression() == record.CompressionZstd {
				compressed++
			}
			rest = r
		}
		if compressed == 0 {
			t.Fatalf("%s stores no compressed batch", node.cfg.NodeID)
		}
		if first == nil {
			first = raw
		} else if string(raw) != string(first) {
			t.Fatalf("%s stores other bytes than %s", node.cfg.NodeID, tc.nodes[0].cfg.NodeID)
		}
	}
}
