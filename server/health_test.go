package server

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	pb "github.com/tsstore/tsstore/proto/tsstorev1"
)

func dialHealth(t *testing.T, addr string) healthpb.HealthClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return healthpb.NewHealthClient(conn)
}

// watchHealthOf opens a Watch stream for service on n.
func watchHealthOf(t *testing.T, ctx context.Context, n *Node, service string) healthpb.Health_WatchClient {
	t.Helper()
	w, err := dialHealth(t, n.APIAddr()).Watch(ctx, &healthpb.HealthCheckRequest{Service: service})
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// awaitStatus reads a Watch stream until it reports want.
func awaitStatus(t *testing.T, w healthpb.Health_WatchClient, want healthpb.HealthCheckResponse_ServingStatus) {
	t.Helper()
	for {
		resp, err := w.Recv()
		if err != nil {
			t.Fatalf("waiting for %v: %v", want, err)
		}
		if resp.Status == want {
			return
		}
	}
}

func checkStatus(t *testing.T, n *Node, service string) healthpb.HealthCheckResponse_ServingStatus {
	t.Helper()
	resp, err := dialHealth(t, n.APIAddr()).Check(ctxT(t), &healthpb.HealthCheckRequest{Service: service})
	if err != nil {
		t.Fatalf("health check of %q on %s: %v", service, n.cfg.NodeID, err)
	}
	return resp.Status
}

func TestHealthServingOnAllNodes(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	for _, n := range tc.nodes {
		for _, svc := range []string{"", "tsstore.v1.EventStore"} {
			awaitStatus(t, watchHealthOf(t, ctxT(t), n, svc), healthpb.HealthCheckResponse_SERVING)
		}
		if serving, reason := n.Health(); !serving || reason != "" {
			t.Fatalf("%s: Health() = %v %q after SERVING", n.cfg.NodeID, serving, reason)
		}
		if err := n.Live(); err != nil {
			t.Fatalf("%s: Live: %v", n.cfg.NodeID, err)
		}
	}
	if _, err := dialHealth(t, tc.nodes[0].APIAddr()).Check(ctxT(t), &healthpb.HealthCheckRequest{Service: "no.such.Service"}); status.Code(err) != codes.NotFound {
		t.Fatalf("unknown service: %v, want NotFound", err)
	}
}

// A node whose only peer does not exist can never elect a leader: it must
// stay NOT_SERVING. Once the peer comes up, both serve. Close reports
// NOT_SERVING to watchers before the API stops.
func TestHealthNeedsLeaderAndEndsAtClose(t *testing.T) {
	addrs := freeAddrs(t, 4)
	peers := []Peer{{ID: "n1", RaftAddr: addrs[0]}, {ID: "n2", RaftAddr: addrs[2]}}
	cfgs := make([]Config, 2)
	for i := range cfgs {
		c := DefaultConfig()
		c.NodeID, c.DataDir = peers[i].ID, t.TempDir()
		c.RaftAddr, c.APIAddr, c.Bootstrap = addrs[2*i], addrs[2*i+1], peers
		c.HeartbeatTimeout, c.ElectionTimeout, c.LeaderLeaseTimeout = 100*time.Millisecond, 100*time.Millisecond, 50*time.Millisecond
		cfgs[i] = c
	}
	n1, err := New(cfgs[0])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n1.Close() })
	w := watchHealthOf(t, ctxT(t), n1, "")
	awaitStatus(t, w, healthpb.HealthCheckResponse_NOT_SERVING)
	// Watch n1 through ten election timeouts (elections it cannot win,
	// pre-vote keeps its term): it must never report SERVING.
	wctx, cancel := context.WithTimeout(ctxT(t), 10*cfgs[0].ElectionTimeout)
	defer cancel()
	w2 := watchHealthOf(t, wctx, n1, pb.EventStore_ServiceDesc.ServiceName)
	for {
		resp, err := w2.Recv()
		if c := status.Code(err); c == codes.DeadlineExceeded || c == codes.Canceled {
			break // the watch's time is up (either side may notice first)
		}
		if err != nil || resp.Status != healthpb.HealthCheckResponse_NOT_SERVING {
			t.Fatalf("without a leader: %v %v", resp, err)
		}
	}
	for _, svc := range healthServices {
		if st := checkStatus(t, n1, svc); st != healthpb.HealthCheckResponse_NOT_SERVING {
			t.Fatalf("service %q without a leader: %v", svc, st)
		}
	}
	if serving, reason := n1.Health(); serving || !strings.Contains(reason, "no leader") {
		t.Fatalf("Health() without a leader = %v %q", serving, reason)
	}

	n2, err := New(cfgs[1])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n2.Close() })
	awaitStatus(t, w, healthpb.HealthCheckResponse_SERVING)
	awaitStatus(t, watchHealthOf(t, ctxT(t), n2, pb.EventStore_ServiceDesc.ServiceName), healthpb.HealthCheckResponse_SERVING)

	changed := n1.HealthChanged()
	closed := make(chan error, 1)
	go func() { closed <- n1.Close() }()
	<-changed
	if serving, reason := n1.Health(); serving || reason != "shutting down" {
		t.Fatalf("Health() during Close = %v %q", serving, reason)
	}
	awaitStatus(t, w, healthpb.HealthCheckResponse_NOT_SERVING)
	for {
		resp, err := w.Recv()
		if err != nil {
			if status.Code(err) != codes.Unavailable {
				t.Fatalf("watch stream at shutdown ended with %v, want Unavailable", err)
			}
			break
		}
		if resp.Status != healthpb.HealthCheckResponse_NOT_SERVING {
			t.Fatalf("watch during Close: %v", resp.Status)
		}
	}
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
}

// A node that loses its leader for longer than the election timeout goes
// NOT_SERVING.
func TestHealthNotServingWithoutQuorum(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	n := tc.nodes[0]
	w := watchHealthOf(t, ctxT(t), n, "")
	awaitStatus(t, w, healthpb.HealthCheckResponse_SERVING)
	for i := 1; i < 3; i++ {
		tc.nodes[i].Close()
		tc.nodes[i] = nil
	}
	awaitStatus(t, w, healthpb.HealthCheckResponse_NOT_SERVING)
	if _, id := n.raft.LeaderWithID(); id != "" {
		t.Fatalf("NOT_SERVING while leader %s is known", id)
	}
}

// A restarted follower reports SERVING only once it has applied what the
// leader had committed before it came back.
func TestHealthServingOnlyAfterCatchUp(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	l := tc.leader()
	c := dial(t, l)
	var fi int
	for i, n := range tc.nodes {
		if n != l {
			fi = i
		}
	}
	tc.nodes[fi].Close()
	tc.nodes[fi] = nil
	for i := range 50 {
		if _, err := c.Append(ctxT(t), &pb.AppendRequest{Events: []*pb.Event{ev("run/a", fmt.Sprint(i))}}); err != nil {
			t.Fatal(err)
		}
	}
	commit := l.raft.CommitIndex()
	f, err := New(tc.cfgs[fi])
	if err != nil {
		t.Fatal(err)
	}
	tc.nodes[fi] = f
	changed := f.HealthChanged()
	if serving, _ := f.Health(); !serving {
		select {
		case <-changed:
		case <-ctxT(t).Done():
			_, reason := f.Health()
			t.Fatalf("restarted follower never served: %s", reason)
		}
	}
	if serving, reason := f.Health(); !serving {
		t.Fatalf("health flipped to not serving: %s", reason)
	}
	if got := f.proc.AppliedIndex(); got < commit {
		t.Fatalf("SERVING at applied index %d, before the leader's commit index %d", got, commit)
	}
}
