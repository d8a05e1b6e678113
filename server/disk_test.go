package server

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/tsstore/tsstore/proto/tsstorev1"
)

// Below the free-space watermark the leader refuses appends at once with
// ResourceExhausted/DISK_FULL and the node is not serving; once space is
// back above the watermark plus the hysteresis, appends resume, with no
// restart.
func TestDiskFullIsAStateNotAHang(t *testing.T) {
	var free atomic.Int64
	free.Store(10 << 30)
	tc := newTestCluster(t, 1, func(c *Config) {
		c.MinFreeBytes, c.DiskResumeBytes = 1<<30, 256<<20
		c.freeSpace = func(string) (int64, error) { return free.Load(), nil }
	})
	n := tc.leader()
	c := dial(t, n)
	if _, err := c.Append(ctxT(t), &pb.AppendRequest{Events: []*pb.Event{ev("s", "before")}}); err != nil {
		t.Fatal(err)
	}
	free.Store(100 << 20)
	waitHealth(t, n, false, "disk space low")
	start := time.Now()
	_, err := c.Append(ctxT(t), &pb.AppendRequest{Events: []*pb.Event{ev("s", "refused")}})
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "disk space low") || time.Since(start) > time.Second {
		t.Fatalf("append on a full disk: %v after %v, want ResourceExhausted at once", err, time.Since(start))
	}
	if _, r := reason(err); r != pb.ErrorReason_ERROR_REASON_DISK_FULL.String() {
		t.Fatalf("reason %q, want DISK_FULL", r)
	}
	// Above the watermark but within the hysteresis: still refused.
	free.Store(1<<30 + 100<<20)
	time.Sleep(2 * diskCheckEvery)
	if _, err := c.Append(ctxT(t), &pb.AppendRequest{Events: []*pb.Event{ev("s", "refused")}}); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("append within the hysteresis: %v", err)
	}
	free.Store(2 << 30)
	waitHealth(t, n, true, "")
	if _, err := c.Append(ctxT(t), &pb.AppendRequest{Events: []*pb.Event{ev("s", "after")}}); err != nil {
		t.Fatalf("append once space is back: %v", err)
	}
	got := readAll(t, c, &pb.ReadRequest{})
	if len(got) != 2 || got[0] != "before" || got[1] != "after" {
		t.Fatalf("log %v, want exactly before and after", got)
	}
}

func waitHealth(t *testing.T, n *Node, serving bool, reason string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		ch := n.HealthChanged()
		s, r := n.Health()
		if s == serving && strings.Contains(r, reason) {
			return
		}
		select {
		case <-ch:
		case <-time.After(100 * time.Millisecond):
		case <-deadline:
			t.Fatalf("%s: health serving=%v (%s), want %v (%q)", n.cfg.NodeID, s, r, serving, reason)
		}
	}
}

// Beyond max-read-streams a new Read or Subscribe is refused at once with
// ResourceExhausted; once one ends, a new one is served.
func TestReadStreamsAreCapped(t *testing.T) {
	tc := newTestCluster(t, 1, func(c *Config) { c.MaxReadStreams = 2 })
	n := tc.leader()
	c := dial(t, n)
	if _, err := c.Append(ctxT(t), &pb.AppendRequest{Events: []*pb.Event{ev("s", "v")}}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(ctxT(t))
	var subs []pb.EventStore_SubscribeClient
	for range 2 {
		s, err := c.Subscribe(ctx, &pb.ReadRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Recv(); err != nil {
			t.Fatal(err)
		}
		subs = append(subs, s)
	}
	stream, err := c.Read(ctxT(t), &pb.ReadRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("a third stream: %v, want ResourceExhausted", err)
	}
	cancel()
	deadline := time.Now().Add(5 * time.Second)
	for n.readStreams.Load() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := readAll(t, c, &pb.ReadRequest{}); len(got) != 1 {
		t.Fatalf("read after the subscriptions ended: %v", got)
	}
}

// When a majority of voters cannot persist (here two followers below their
// watermark, the leader fine), no entry can commit: the leader refuses
// appends at once with DISK_FULL instead of letting them time out, and
// accepts them again once the followers have space.
func TestLeaderRefusesWhenAMajorityCannotPersist(t *testing.T) {
	var free [3]atomic.Int64
	for i := range free {
		free[i].Store(10 << 30)
	}
	tc := newTestCluster(t, 3, func(c *Config) {
		i := int(c.NodeID[1] - '1')
		c.MinFreeBytes, c.DiskResumeBytes = 1<<30, 0
		c.freeSpace = func(string) (int64, error) { return free[i].Load(), nil }
	})
	l := tc.leader()
	c := dial(t, l)
	for i, n := range tc.nodes {
		if n != l {
			free[i].Store(1 << 20)
			waitHealth(t, n, false, "disk space low")
		}
	}
	deadline := time.Now().Add(15 * time.Second)
	var err error
	for time.Now().Before(deadline) {
		_, err = c.Append(ctxT(t), &pb.AppendRequest{Events: []*pb.Event{ev("s", "v")}})
		if _, r := reason(err); r == pb.ErrorReason_ERROR_REASON_DISK_FULL.String() {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if _, r := reason(err); r != pb.ErrorReason_ERROR_REASON_DISK_FULL.String() || !strings.Contains(err.Error(), "2 of 3 voters cannot persist") {
		t.Fatalf("append while two of three voters are full: %v", err)
	}
	for i := range free {
		free[i].Store(10 << 30)
	}
	deadline = time.Now().Add(15 * time.Second)
	for {
		if _, err = c.Append(ctxT(t), &pb.AppendRequest{Events: []*pb.Event{ev("s", "w")}}); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("appends not accepted again once space is back: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
