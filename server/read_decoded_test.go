package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"reflect"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/tsstore/tsstore/client"
	pb "github.com/tsstore/tsstore/proto/tsstorev1"
)

// readDecoded reads req with decoded set and checks the message-level
// contract: next_offset never goes back, every event lies in [previous
// next_offset, next_offset), and a message of more than one event is at
// most maxBytes (unless 0).
func readDecoded(t *testing.T, recv func() (*pb.ReadResponse, error), start uint64, n, maxBytes int) ([]*pb.DecodedEvent, int) {
	t.Helper()
	var out []*pb.DecodedEvent
	msgs := 0
	for n < 0 || len(out) < n {
		resp, err := recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		msgs++
		if len(resp.Batches) != 0 {
			t.Fatalf("decoded message carries %d bytes of batches", len(resp.Batches))
		}
		if size := proto.Size(resp); maxBytes > 0 && len(resp.Events) > 1 && size > maxBytes {
			t.Fatalf("message of %d events is %d bytes, over max_message_bytes %d", len(resp.Events), size, maxBytes)
		}
		if resp.NextOffset < start {
			t.Fatalf("next_offset went back from %d to %d", start, resp.NextOffset)
		}
		for _, e := range resp.Events {
			if e.Offset < start || e.Offset >= resp.NextOffset {
				t.Fatalf("event at %d outside message range [%d,%d)", e.Offset, start, resp.NextOffset)
			}
		}
		out = append(out, resp.Events...)
		start = resp.NextOffset
	}
	return out, msgs
}

// fromSDK is what the Go client decodes from raw batches for the same
// selection, in DecodedEvent form.
func fromSDK(t *testing.T, c *client.Client, from uint64, opts ...client.ReadOption) []*pb.DecodedEvent {
	t.Helper()
	var out []*pb.DecodedEvent
	for e, err := range c.Replay(ctxT(t), from, opts...) {
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, &pb.DecodedEvent{Offset: e.Offset, Stream: e.Stream, StreamVersion: e.StreamVersion,
			Type: e.Type, ProducerId: e.ProducerID, ProducerSeq: e.ProducerSeq, TimestampUnixNano: e.Timestamp.UnixNano(),
			RaftIndex: e.RaftIndex, Metadata: e.Metadata, Payload: e.Payload})
	}
	return out
}

func sameEvents(t *testing.T, what string, got, want []*pb.DecodedEvent) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d decoded events, the SDK decodes %d", what, len(got), len(want))
	}
	if len(want) == 0 {
		t.Fatalf("%s: the selection is empty; the test proves nothing", what)
	}
	for i := range want {
		g, w := got[i], want[i]
		// nil and empty byte slices are the same on the wire.
		if len(g.Metadata) == 0 && len(w.Metadata) == 0 {
			g.Metadata, w.Metadata = nil, nil
		}
		if len(g.Payload) == 0 && len(w.Payload) == 0 {
			g.Payload, w.Payload = nil, nil
		}
		if !reflect.DeepEqual(g.String(), w.String()) {
			t.Fatalf("%s: event %d\n got %v\nwant %v", what, i, g, w)
		}
	}
}

// TestDecodedReadEqualsSDK reads the same selections decoded by the
// server and raw decoded by the SDK, with whole and cut-short messages.
func TestDecodedReadEqualsSDK(t *testing.T) {
	tc := newTestCluster(t, 1, nil)
	c := dial(t, tc.leader())
	seed(t, c)
	// An idempotent append with metadata, so every field is non-zero.
	if _, err := c.Append(ctxT(t), &pb.AppendRequest{ProducerId: "p1", ProducerSeq: 1, Events: []*pb.Event{
		{Stream: "run/1", Type: "Note", Metadata: []byte(`{"k":1}`), Payload: []byte("hello")},
		{Stream: "run/9", Type: "Note", Payload: []byte("world")},
	}}); err != nil {
		t.Fatal(err)
	}
	sdkc := sdk(t, tc)
	cases := []struct {
		name string
		req  *pb.ReadRequest
		opts []client.ReadOption
	}{
		{"all", &pb.ReadRequest{}, nil},
		{"mid-batch range", &pb.ReadRequest{FromOffset: 15, ToOffset: 137}, []client.ReadOption{client.To(137)}},
		{"stream", &pb.ReadRequest{Stream: "run/1"}, []client.ReadOption{client.Stream("run/1")}},
		{"stream from version", &pb.ReadRequest{Stream: "run/2", FromVersion: 40}, []client.ReadOption{client.Stream("run/2"), client.FromVersion(40)}},
		{"prefix and types", &pb.ReadRequest{StreamPrefix: "run/", EventTypes: []string{"GradientSync", "Note"}, FromOffset: 100},
			[]client.ReadOption{client.StreamPrefix("run/"), client.EventTypes("GradientSync", "Note")}},
	}
	for _, tt := range cases {
		for _, maxBytes := range []uint32{0, 200} {
			t.Run(fmt.Sprintf("%s/max%d", tt.name, maxBytes), func(t *testing.T) {
				req := tt.req
				req.Decoded, req.MaxMessageBytes = true, maxBytes
				s, err := c.Read(ctxT(t), req)
				if err != nil {
					t.Fatal(err)
				}
				got, msgs := readDecoded(t, s.Recv, req.FromOffset, -1, int(maxBytes))
				opts := append([]client.ReadOption{client.MaxMessageBytes(maxBytes)}, tt.opts...)
				sameEvents(t, tt.name, got, fromSDK(t, sdkc, req.FromOffset, opts...))
				if maxBytes == 200 && msgs < len(got)/10 {
					t.Fatalf("%d events in %d messages of at most 200 bytes", len(got), msgs)
				}
			})
		}
	}
	// Decoded reads validate the request as raw ones do.
	s, err := c.Read(ctxT(t), &pb.ReadRequest{Decoded: true, Stream: "run/none"})
	if err == nil {
		_, err = s.Recv()
	}
	if code, r := reason(err); r != "ERROR_REASON_STREAM_NOT_FOUND" {
		t.Fatalf("decoded read of an unknown stream: %v %v", code, err)
	}
}

// TestDecodedSubscribeLive follows one stream decoded from its history
// into live appends.
func TestDecodedSubscribeLive(t *testing.T) {
	tc := newTestCluster(t, 1, nil)
	c := dial(t, tc.leader())
	seed(t, c)
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	sub, err := c.Subscribe(ctx, &pb.ReadRequest{Decoded: true, Stream: "run/0", FromVersion: 95})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan []*pb.DecodedEvent, 1)
	go func() {
		evs, _ := readDecoded(t, sub.Recv, 0, 16, 0)
		done <- evs
	}()
	for i := range 10 {
		if _, err := c.Append(ctxT(t), &pb.AppendRequest{Events: []*pb.Event{ev("run/0", fmt.Sprint("live", i)), ev("other", "x")}}); err != nil {
			t.Fatal(err)
		}
	}
	evs := <-done
	if len(evs) != 16 {
		t.Fatalf("%d events, want 6 historic and 10 live", len(evs))
	}
	for i, e := range evs {
		if e.Stream != "run/0" || e.StreamVersion != uint64(95+i) {
			t.Fatalf("event %d: %v (want version %d)", i, e, 95+i)
		}
		if i >= 6 && string(e.Payload) != fmt.Sprint("live", i-6) {
			t.Fatalf("live event %d: payload %q", i, e.Payload)
		}
	}
}
