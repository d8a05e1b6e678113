package server

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tsstore/tsstore/client"
	"github.com/tsstore/tsstore/fsm"
	pb "github.com/tsstore/tsstore/proto/tsstorev1"
	"github.com/tsstore/tsstore/record"
	"github.com/tsstore/tsstore/segment"
)

// countStream counts stream's records in n's segments.
func countStream(t *testing.T, n *Node, stream string) int {
	t.Helper()
	c := 0
	err := n.proc.WithLog(func(l *segment.Log) error {
		return l.Scan(l.FirstOffset(), func(b record.Batch) error {
			it := b.Records()
			var r record.Record
			for it.Next(&r) {
				if string(r.Stream) == stream {
					c++
				}
			}
			return it.Err()
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Deleting a stream: reads of it get NotFound at once on every node, its
// events leave the sealed segments on every replica (same digests), the
// other streams and producer dedup are untouched, and the stream may be
// written again.
func TestStreamDelete(t *testing.T) {
	tc := newTestCluster(t, 3, func(c *Config) {
		c.Segment.SegmentBytes = 64 << 10
		c.RetentionInterval = 0
	})
	next := appendBatches(t, tc, "p1", 60) // run/0, run/1, run/2 mixed
	ctx := ctxT(t)
	// And one batch of run/1 alone, in the active segment.
	solo := &pb.AppendRequest{Events: []*pb.Event{ev("run/1", "a"), ev("run/1", "b"), ev("run/1", "c")}}
	if resp, err := dial(t, tc.leader()).Append(ctx, solo); err != nil {
		t.Fatal(err)
	} else {
		next = resp.LastOffset + 1
	}
	waitNextOffset(t, tc.nodes, next)
	rc := dialRetention(t, tc.follower())
	if _, err := rc.DeleteStream(ctx, &pb.DeleteStreamRequest{Stream: "nope"}); status.Code(err) != codes.NotFound {
		t.Fatalf("delete of a missing stream: %v", err)
	}
	if _, err := rc.DeleteStream(ctx, &pb.DeleteStreamRequest{Stream: fsm.SnapshotStream}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("delete of a system stream: %v", err)
	}
	before1 := countStream(t, tc.leader(), "run/1")
	before2 := countStream(t, tc.leader(), "run/2")
	resp, err := rc.DeleteStream(ctx, &pb.DeleteStreamRequest{Stream: "run/1"})
	if err != nil || resp.Version != uint64(before1) {
		t.Fatalf("delete through a follower: %v, %v (stream had %d events)", resp, err, before1)
	}
	waitAllApplied(t, tc)
	c := sdk(t, tc)
	for _, n := range tc.nodes {
		_, err := dial(t, n).Read(ctx, &pb.ReadRequest{Stream: "run/1"})
		if err == nil {
			var s pb.EventStore_ReadClient
			s, err = dial(t, n).Read(ctx, &pb.ReadRequest{Stream: "run/1"})
			if err == nil {
				_, err = s.Recv()
			}
		}
		if status.Code(err) != codes.NotFound {
			t.Fatalf("%s: read of the deleted stream: %v", n.cfg.NodeID, err)
		}
	}
	// Filtered reads hide its events before any rewrite; listing hides it.
	for e, err := range c.Replay(ctx, 0, client.StreamPrefix("run/"), client.To(tc.leader().proc.NextOffset())) {
		if err != nil {
			t.Fatal(err)
		}
		if e.Stream == "run/1" {
			t.Fatalf("a prefix read returned the deleted stream's event at %d", e.Offset)
		}
	}
	for st, err := range c.ListStreams(ctx, "run/") {
		if err != nil {
			t.Fatal(err)
		}
		if st.Name == "run/1" {
			t.Fatal("ListStreams shows the deleted stream")
		}
	}
	// Unfiltered whole-log reads hide the deleted events at once too, in
	// the sealed and the active segment, before any rewrite, and stay
	// contiguous (a batch left empty becomes a control batch over its
	// span, which Replay skips).
	unfiltered := func(to uint64) int {
		t.Helper()
		n := 0
		for e, err := range c.Replay(ctx, 0, client.To(to)) {
			if err != nil {
				t.Fatalf("unfiltered read across the deleted stream's events: %v", err)
			}
			if e.Stream == "run/1" {
				n++
			}
		}
		return n
	}
	if got := unfiltered(tc.leader().proc.NextOffset()); got != 0 {
		t.Fatalf("an unfiltered read before the rewrite returned %d events of the deleted stream", got)
	}
	for _, n := range tc.nodes { // raw batches, every node: no record of it, spans contiguous
		stream, err := dial(t, n).Read(ctx, &pb.ReadRequest{ToOffset: next})
		if err != nil {
			t.Fatal(err)
		}
		pos, control := uint64(0), 0
		for {
			m, err := stream.Recv()
			if err != nil {
				break
			}
			for buf := m.Batches; len(buf) > 0; {
				b, rest, err := record.Next(buf)
				if err != nil {
					t.Fatal(err)
				}
				buf = rest
				h := b.Header()
				if h.BaseOffset > pos {
					t.Fatalf("%s: batch at %d after %d: a gap", n.cfg.NodeID, h.BaseOffset, pos)
				}
				pos = h.NextOffset()
				if h.IsControl() {
					control++
					continue
				}
				it := b.Records()
				var r record.Record
				for it.Next(&r) {
					if string(r.Stream) == "run/1" {
						t.Fatalf("%s: unfiltered raw read returned run/1's event at %d", n.cfg.NodeID, r.Offset)
					}
				}
			}
		}
		if pos < next {
			t.Fatalf("%s: raw read ended at %d, want %d", n.cfg.NodeID, pos, next)
		}
		if control == 0 {
			t.Fatalf("%s: no control batch: run/1's batches were not hidden whole", n.cfg.NodeID)
		}
	}
	// The leader's tick drops the events from the sealed segments.
	done, err := tc.leader().compactRuns(time.Now())
	if err != nil || done == 0 {
		t.Fatalf("compactRuns: %d, %v", done, err)
	}
	waitAllApplied(t, tc)
	waitRewritten(t, tc)
	want := digests(t, tc.leader())
	active := tc.leader().proc.Retention()
	sealedEnd := active.Segments[len(active.Segments)-1].NextOffset
	for _, n := range tc.nodes {
		if got := digests(t, n); got != want {
			t.Fatalf("digests differ:\n%s: %s\nleader: %s", n.cfg.NodeID, got, want)
		}
		if got := countStream(t, n, "run/2"); got != before2 {
			t.Fatalf("%s: run/2 has %d events, had %d", n.cfg.NodeID, got, before2)
		}
		left := 0
		_ = n.proc.WithLog(func(l *segment.Log) error {
			return l.Scan(0, func(b record.Batch) error {
				it := b.Records()
				var r record.Record
				for it.Next(&r) {
					if string(r.Stream) == "run/1" && r.Offset < sealedEnd {
						left++
					}
				}
				return nil
			})
		})
		if left > 1 { // a segment left with no record keeps its last one
			t.Fatalf("%s: %d events of run/1 still in the sealed segments", n.cfg.NodeID, left)
		}
	}
	// Rewritten: an unfiltered read crosses the thinned spans without a
	// gap error and returns none of them (not even the record a segment
	// left with no record keeps).
	if got := unfiltered(sealedEnd); got != 0 {
		t.Fatalf("an unfiltered read after the rewrite returned %d events of the deleted stream", got)
	}
	// Producer dedup is untouched: a retry of p1's last request (which
	// wrote run/1 events too) is a duplicate.
	last := make([]*pb.Event, 10)
	for j := range last {
		last[j] = ev(fmt.Sprintf("run/%d", j%3), repairPayload)
	}
	r, err := dial(t, tc.leader()).Append(ctx, &pb.AppendRequest{ProducerId: "p1", ProducerSeq: 591, Events: last})
	if err != nil || !r.Duplicate {
		t.Fatalf("retried append: %v, %v", r, err)
	}
	// Written again: readable from after the delete, versions going on.
	evs := []*pb.Event{ev("run/1", repairPayload)}
	r, err = dial(t, tc.leader()).Append(ctx, &pb.AppendRequest{ProducerId: "p9", ProducerSeq: 1, Events: evs})
	if err != nil {
		t.Fatal(err)
	}
	waitAllApplied(t, tc)
	var got []client.RecordedEvent
	for e, err := range c.Replay(ctx, resp.UptoOffset+1, client.Stream("run/1"), client.To(tc.leader().proc.NextOffset())) {
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, e)
	}
	if len(got) != 1 || got[0].StreamVersion != resp.Version+1 {
		t.Fatalf("after writing again: %+v", got)
	}
	for _, err := range c.Replay(ctx, 0, client.Stream("run/1"), client.To(tc.leader().proc.NextOffset())) {
		var oc *client.OffsetCompactedError
		if err != nil && !errors.As(err, &oc) {
			t.Fatalf("read from 0 of a deleted then rewritten stream: %v", err)
		}
		if err != nil {
			break
		}
	}
}
