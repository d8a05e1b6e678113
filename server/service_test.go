package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/tsstore/tsstore/proto/tsstorev1"
	"github.com/tsstore/tsstore/record"
)

func ev(stream, payload string) *pb.Event {
	return &pb.Event{Stream: stream, Type: "BatchCompleted", Payload: []byte(payload)}
}

// readAll reads [from, to) from a node and returns the records' payloads
// by offset.
func readAll(t *testing.T, c pb.EventStoreClient, req *pb.ReadRequest) map[uint64]string {
	t.Helper()
	stream, err := c.Read(ctxT(t), req)
	if err != nil {
		t.Fatal(err)
	}
	out := map[uint64]string{}
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		for buf := resp.Batches; len(buf) > 0; {
			b, rest, err := record.Next(buf)
			if err != nil {
				t.Fatal(err)
			}
			it := b.Records()
			var r record.Record
			for it.Next(&r) {
				out[r.Offset] = string(r.Payload)
			}
			buf = rest
		}
	}
}

func reason(err error) (codes.Code, string) {
	st := status.Convert(err)
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return st.Code(), info.Reason
		}
	}
	return st.Code(), ""
}

func TestAppendOnFollowerIsForwarded(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	f := dial(t, tc.follower())
	resp, err := f.Append(ctxT(t), &pb.AppendRequest{ProducerId: "p", ProducerSeq: 1, Events: []*pb.Event{ev("run/a", "x"), ev("run/a", "y")}})
	if err != nil {
		t.Fatal(err)
	}
	if resp.FirstOffset != 0 || resp.LastOffset != 1 || resp.StreamVersions[0].Version != 2 {
		t.Fatalf("response %v", resp)
	}
	// Read-your-writes from another node: min_next_offset waits for it.
	got := readAll(t, dial(t, tc.nodes[2]), &pb.ReadRequest{MinNextOffset: resp.LastOffset + 1})
	if got[0] != "x" || got[1] != "y" {
		t.Fatalf("read %v", got)
	}
}

func TestRetryReturnsOriginalOffsets(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	c := dial(t, tc.leader())
	req := &pb.AppendRequest{ProducerId: "p", ProducerSeq: 1, Events: []*pb.Event{ev("s", "a")}}
	first, err := c.Append(ctxT(t), req)
	if err != nil {
		t.Fatal(err)
	}
	again, err := dial(t, tc.follower()).Append(ctxT(t), req)
	if err != nil || !again.Duplicate || again.FirstOffset != first.FirstOffset {
		t.Fatalf("retry: %v %v", again, err)
	}
	_, err = c.Append(ctxT(t), &pb.AppendRequest{ProducerId: "p", ProducerSeq: 5, Events: []*pb.Event{ev("s", "b")}})
	if code, r := reason(err); code != codes.FailedPrecondition || r != "ERROR_REASON_SEQUENCE_GAP" {
		t.Fatalf("gap: %v", err)
	}
}

func TestGroupCommitCoalescesConcurrentAppends(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	l := tc.leader()
	c := dial(t, l)
	before := l.raft.LastIndex()
	const n = 200
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := c.Append(ctxT(t), &pb.AppendRequest{Events: []*pb.Event{ev("s", fmt.Sprint(i))}})
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	entries := l.raft.LastIndex() - before
	if entries >= n {
		t.Fatalf("%d appends took %d raft entries: no coalescing", n, entries)
	}
	t.Logf("%d concurrent appends in %d raft entries", n, entries)
	if got := readAll(t, c, &pb.ReadRequest{}); len(got) != n {
		t.Fatalf("read %d events, want %d", len(got), n)
	}
}

func TestLinearizableReadOnFollower(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	l := dial(t, tc.leader())
	resp, err := l.Append(ctxT(t), &pb.AppendRequest{Events: []*pb.Event{ev("s", "v")}})
	if err != nil {
		t.Fatal(err)
	}
	got := readAll(t, dial(t, tc.follower()), &pb.ReadRequest{Consistency: pb.Consistency_CONSISTENCY_LINEARIZABLE})
	if got[resp.FirstOffset] != "v" {
		t.Fatalf("linearizable read on follower missed the committed append: %v", got)
	}
}

func TestBadInput(t *testing.T) {
	tc := newTestCluster(t, 1, func(c *Config) { c.MaxEventBytes, c.MaxRequestBytes = 1024, 64<<10 })
	c := dial(t, tc.leader())
	cases := []struct {
		name   string
		req    *pb.AppendRequest
		code   codes.Code
		reason string
	}{
		{"empty", &pb.AppendRequest{}, codes.InvalidArgument, "ERROR_REASON_INVALID_EVENT"},
		{"too large", &pb.AppendRequest{Events: []*pb.Event{{Stream: "s", Type: "t", Payload: make([]byte, 2000)}}}, codes.InvalidArgument, "ERROR_REASON_EVENT_TOO_LARGE"},
		{"bad stream", &pb.AppendRequest{Events: []*pb.Event{{Stream: "bad name", Type: "t"}}}, codes.InvalidArgument, "ERROR_REASON_INVALID_EVENT"},
		{"escape in type", &pb.AppendRequest{Events: []*pb.Event{{Stream: "s", Type: "\x1b[31mRed"}}}, codes.InvalidArgument, "ERROR_REASON_INVALID_EVENT"},
		{"newline in producer", &pb.AppendRequest{ProducerId: "p\nq", ProducerSeq: 1, Events: []*pb.Event{{Stream: "s", Type: "t"}}}, codes.InvalidArgument, "ERROR_REASON_INVALID_EVENT"},
		{"expectations count toward the limit", &pb.AppendRequest{Events: []*pb.Event{{Stream: "s", Type: "t"}},
			Expectations: expectations(1000)}, codes.InvalidArgument, "ERROR_REASON_REQUEST_TOO_LARGE"},
		{"no type", &pb.AppendRequest{Events: []*pb.Event{{Stream: "s"}}}, codes.InvalidArgument, "ERROR_REASON_INVALID_EVENT"},
		{"seq zero", &pb.AppendRequest{ProducerId: "p", Events: []*pb.Event{ev("s", "x")}}, codes.InvalidArgument, "ERROR_REASON_INVALID_EVENT"},
		{"long type", &pb.AppendRequest{Events: []*pb.Event{{Stream: "s", Type: strings.Repeat("t", 300)}}}, codes.InvalidArgument, "ERROR_REASON_INVALID_EVENT"},
	}
	for _, tt := range cases {
		_, err := c.Append(ctxT(t), tt.req)
		if code, r := reason(err); code != tt.code || r != tt.reason {
			t.Errorf("%s: got %v (%s), want %v %s", tt.name, code, r, tt.code, tt.reason)
		}
	}
	stream, _ := c.Read(ctxT(t), &pb.ReadRequest{FromOffset: 10, ToOffset: 5})
	if _, err := stream.Recv(); status.Code(err) != codes.InvalidArgument {
		t.Errorf("read with to < from: %v", err)
	}
	// Past the end: an empty stream, at once.
	if got := readAll(t, c, &pb.ReadRequest{FromOffset: 1000}); len(got) != 0 {
		t.Errorf("read past the end returned %v", got)
	}
	// The node still serves after all of that.
	if _, err := c.Append(ctxT(t), &pb.AppendRequest{Events: []*pb.Event{ev("s", "ok")}}); err != nil {
		t.Fatal(err)
	}
}

func TestDataDirOfAnotherClusterIsRefused(t *testing.T) {
	tc := newTestCluster(t, 1, nil)
	cfg := tc.cfgs[0]
	tc.nodes[0].Close()
	tc.nodes[0] = nil
	cfg.ClusterName = "other"
	if _, err := New(cfg); !errors.Is(err, ErrWrongCluster) || !strings.Contains(err.Error(), "node.json") {
		t.Fatalf("start with another cluster's data dir: %v", err)
	}
	cfg.ClusterName = "tsstore"
	cfg.NodeID = "n9"
	cfg.Bootstrap = nil
	if _, err := New(cfg); !errors.Is(err, ErrWrongCluster) {
		t.Fatalf("start with another node's data dir: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	cfg := DefaultConfig()
	if err := cfg.Validate(); err == nil {
		t.Fatal("default config without id, dirs and addresses validated")
	}
	cfg.NodeID, cfg.DataDir, cfg.RaftAddr, cfg.APIAddr = "n1", t.TempDir(), "127.0.0.1:1", "127.0.0.1:2"
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	cfg.Bootstrap = []Peer{{ID: "n2", RaftAddr: "127.0.0.1:3"}}
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "do not include this node") {
		t.Fatalf("bootstrap without self: %v", err)
	}
}

func TestTransferLeadership(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	old := tc.leader()
	target := tc.follower()
	conn := dialCluster(t, target) // a follower forwards the call
	resp, err := conn.TransferLeadership(ctxT(t), &pb.TransferLeadershipRequest{ToNodeId: target.cfg.NodeID})
	if err != nil {
		t.Fatal(err)
	}
	if resp.NewLeaderId != target.cfg.NodeID || old.raft.State() == raft.Leader {
		t.Fatalf("new leader %q, want %q", resp.NewLeaderId, target.cfg.NodeID)
	}
	_, err = conn.TransferLeadership(ctxT(t), &pb.TransferLeadershipRequest{ToNodeId: "nope"})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("transfer to unknown node: %v", err)
	}
}

// TestCloseDuringLeadershipChurn closes nodes while leadership moves and
// appends are in flight: Close must return (no future left unanswered).
func TestCloseDuringLeadershipChurn(t *testing.T) {
	for round := range 3 {
		tc := newTestCluster(t, 3, nil)
		c := dial(t, tc.leader())
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var wg sync.WaitGroup
		for i := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for ctx.Err() == nil {
					c.Append(ctx, &pb.AppendRequest{Events: []*pb.Event{ev("s", fmt.Sprint(i))}})
				}
			}()
		}
		dialCluster(t, tc.leader()).TransferLeadership(ctxT(t), &pb.TransferLeadershipRequest{})
		done := make(chan struct{})
		go func() { tc.close(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Fatalf("round %d: Close did not return", round)
		}
		cancel()
		wg.Wait()
	}
}

func expectations(n int) []*pb.StreamExpectation {
	var out []*pb.StreamExpectation
	for i := range n {
		out = append(out, &pb.StreamExpectation{Stream: fmt.Sprintf("stream/%0150d", i)})
	}
	return out
}
