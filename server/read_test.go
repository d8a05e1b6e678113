package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/tsstore/tsstore/proto/tsstorev1"
	"github.com/tsstore/tsstore/record"
)

type got struct {
	offset  uint64
	stream  string
	version uint64
	typ     string
}

// collect reads messages until EOF (or n events for subscriptions) and
// checks the message-level contract: each message covers [start, next)
// completely and its batches lie inside that range.
func collect(t *testing.T, recv func() (*pb.ReadResponse, error), start uint64, n int) []got {
	t.Helper()
	var out []got
	for n < 0 || len(out) < n {
		resp, err := recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		for buf := resp.Batches; len(buf) > 0; {
			b, rest, err := record.Next(buf)
			if err != nil {
				t.Fatal(err)
			}
			h := b.Header()
			if h.NextOffset() <= start || h.BaseOffset >= resp.NextOffset {
				t.Fatalf("batch [%d,%d) outside message range [%d,%d)", h.BaseOffset, h.NextOffset(), start, resp.NextOffset)
			}
			it := b.Records()
			var r record.Record
			for it.Next(&r) {
				if r.Offset >= start {
					out = append(out, got{r.Offset, string(r.Stream), r.StreamVersion, string(r.Type)})
				}
			}
			buf = rest
		}
		if resp.NextOffset < start {
			t.Fatalf("next_offset went back from %d to %d", start, resp.NextOffset)
		}
		start = resp.NextOffset
	}
	return out
}

func read(t *testing.T, c pb.EventStoreClient, req *pb.ReadRequest) ([]got, error) {
	t.Helper()
	s, err := c.Read(ctxT(t), req)
	if err != nil {
		return nil, err
	}
	first, err := s.Recv()
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	sent := false
	return collect(t, func() (*pb.ReadResponse, error) {
		if !sent && first != nil {
			sent = true
			return first, nil
		}
		return s.Recv()
	}, req.FromOffset, -1), nil
}

// seed appends 300 events over 3 streams and 2 types, in 30 requests.
func seed(t *testing.T, c pb.EventStoreClient) {
	t.Helper()
	for i := range 30 {
		var evs []*pb.Event
		for j := range 10 {
			k := i*10 + j
			evs = append(evs, &pb.Event{Stream: fmt.Sprintf("run/%d", k%3), Type: []string{"BatchCompleted", "GradientSync"}[k%2], Payload: []byte{byte(k)}})
		}
		if _, err := c.Append(ctxT(t), &pb.AppendRequest{Events: evs}); err != nil {
			t.Fatal(err)
		}
	}
}

func TestFilteredAndStreamReads(t *testing.T) {
	tc := newTestCluster(t, 1, nil)
	c := dial(t, tc.leader())
	seed(t, c)

	evs, err := read(t, c, &pb.ReadRequest{Stream: "run/1"})
	if err != nil || len(evs) != 100 {
		t.Fatalf("stream read: %d events, %v", len(evs), err)
	}
	for i, e := range evs {
		if e.stream != "run/1" || e.version != uint64(i+1) {
			t.Fatalf("event %d: %+v", i, e)
		}
	}
	evs, _ = read(t, c, &pb.ReadRequest{Stream: "run/2", FromVersion: 40})
	if len(evs) != 61 || evs[0].version != 40 {
		t.Fatalf("from version 40: %d events, first %+v", len(evs), evs[0])
	}
	evs, _ = read(t, c, &pb.ReadRequest{StreamPrefix: "run/", EventTypes: []string{"GradientSync"}, FromOffset: 100, ToOffset: 200})
	if len(evs) != 50 {
		t.Fatalf("types in [100,200): %d events", len(evs))
	}
	for _, e := range evs {
		if e.typ != "GradientSync" || e.offset < 100 || e.offset >= 200 {
			t.Fatalf("unselected event %+v", e)
		}
	}
	if evs, _ := read(t, c, &pb.ReadRequest{EventTypes: []string{"Nope"}}); len(evs) != 0 {
		t.Fatalf("filter matching nothing returned %d events", len(evs))
	}
	_, err = read(t, c, &pb.ReadRequest{Stream: "run/none"})
	if code, r := reason(err); code != codes.NotFound || r != "ERROR_REASON_STREAM_NOT_FOUND" {
		t.Fatalf("unknown stream: %v", err)
	}
	_, err = read(t, c, &pb.ReadRequest{FromVersion: 3})
	if code, _ := reason(err); code != codes.InvalidArgument {
		t.Fatalf("from_version without stream: %v", err)
	}
}

func TestReadFromTimestamp(t *testing.T) {
	tc := newTestCluster(t, 1, nil)
	c := dial(t, tc.leader())
	seed(t, c)
	mid := time.Now()
	r, err := c.Append(ctxT(t), &pb.AppendRequest{Events: []*pb.Event{ev("late", "x")}})
	if err != nil {
		t.Fatal(err)
	}
	evs, _ := read(t, c, &pb.ReadRequest{FromTimestampUnixNano: mid.UnixNano()})
	if len(evs) != 1 || evs[0].offset != r.FirstOffset {
		t.Fatalf("from timestamp: %+v, want only offset %d", evs, r.FirstOffset)
	}
}

func TestListStreamsRPC(t *testing.T) {
	tc := newTestCluster(t, 1, nil)
	c := dial(t, tc.leader())
	seed(t, c)
	resp, err := c.ListStreams(ctxT(t), &pb.ListStreamsRequest{Prefix: "run/", Limit: 2})
	if err != nil || len(resp.Streams) != 2 || resp.NextAfter != "run/1" || resp.Streams[0].Version != 100 {
		t.Fatalf("page 1: %v %v", resp, err)
	}
	resp, _ = c.ListStreams(ctxT(t), &pb.ListStreamsRequest{Prefix: "run/", After: resp.NextAfter})
	if len(resp.Streams) != 1 || resp.Streams[0].Name != "run/2" || resp.NextAfter != "" {
		t.Fatalf("page 2: %v", resp)
	}
}

func TestSubscribeHistoryThenLive(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	c := dial(t, tc.leader())
	seed(t, c)
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	// Subscribe on a follower to one stream from version 90: 11 historic
	// events, then live ones.
	sub, err := dial(t, tc.follower()).Subscribe(ctx, &pb.ReadRequest{Stream: "run/0", FromVersion: 90, MinNextOffset: 300})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan []got)
	go func() { done <- collect(t, sub.Recv, 0, 21) }()
	for i := range 10 {
		if _, err := c.Append(ctxT(t), &pb.AppendRequest{Events: []*pb.Event{ev("run/0", fmt.Sprint(i)), ev("other", "x")}}); err != nil {
			t.Fatal(err)
		}
	}
	evs := <-done
	for i, e := range evs {
		if e.version != uint64(90+i) || e.stream != "run/0" {
			t.Fatalf("event %d: %+v (want version %d)", i, e, 90+i)
		}
	}
}

func TestIdleSubscribersAreCheap(t *testing.T) {
	tc := newTestCluster(t, 1, nil)
	c := dial(t, tc.leader())
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	const subs = 1000
	var streams []pb.EventStore_SubscribeClient
	for range subs {
		s, err := c.Subscribe(ctx, &pb.ReadRequest{Stream: "run/x"})
		if err != nil {
			t.Fatal(err)
		}
		streams = append(streams, s)
	}
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	// Both ends run in this process: heap per subscription covers the
	// client stream, the server stream and the handler goroutine.
	if per := ms.HeapInuse / subs; per > 256<<10 {
		t.Fatalf("%d idle subscriptions use %d bytes of heap each", subs, per)
	}
	if _, err := c.Append(ctxT(t), &pb.AppendRequest{Events: []*pb.Event{ev("run/x", "wake")}}); err != nil {
		t.Fatal(err)
	}
	for i, s := range streams {
		if evs := collect(t, s.Recv, 0, 1); evs[0].stream != "run/x" {
			t.Fatalf("subscriber %d got %+v", i, evs)
		}
	}
}

func TestSlowSubscriberIsTold(t *testing.T) {
	tc := newTestCluster(t, 1, func(c *Config) { c.MaxSubscriberLag = 50 })
	c := dial(t, tc.leader())
	// A fixed 64 KiB flow-control window, so the server must wait for this
	// reader instead of racing ahead into an ever larger buffer.
	conn, err := grpc.NewClient(tc.leader().APIAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	sub, err := pb.NewEventStoreClient(conn).Subscribe(ctx, &pb.ReadRequest{MaxMessageBytes: 8 << 10})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Append(ctxT(t), &pb.AppendRequest{Events: []*pb.Event{ev("s", "first")}}); err != nil {
		t.Fatal(err)
	}
	collect(t, sub.Recv, 0, 1) // caught up: live from here
	big := make([]byte, 4<<10)
	for range 20 {
		var evs []*pb.Event
		for range 10 {
			evs = append(evs, &pb.Event{Stream: "s", Type: "t", Payload: big})
		}
		if _, err := c.Append(ctxT(t), &pb.AppendRequest{Events: evs}); err != nil {
			t.Fatal(err)
		}
	}
	// The reader keeps reading, slowly, and must be told it is too slow.
	for {
		_, err := sub.Recv()
		if err == nil {
			time.Sleep(5 * time.Millisecond) // the consumer's own pace
			continue
		}
		if code, r := reason(err); code != codes.ResourceExhausted || r != "ERROR_REASON_SLOW_CONSUMER" {
			t.Fatalf("slow subscriber ended with %v", err)
		}
		break
	}
	if _, err := c.Append(ctxT(t), &pb.AppendRequest{Events: []*pb.Event{ev("s", "still serving")}}); err != nil {
		t.Fatal(err)
	}
}
