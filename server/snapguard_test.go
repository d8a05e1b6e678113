package server

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/tsstore/tsstore/proto/tsstorev1"
)

// A follower that cannot persist is not sent snapshots: the leader skips
// InstallSnapshot while the follower reports a full disk (counted), so
// nothing is streamed in a loop, and once the follower has space again it
// gets the snapshot and catches up, with no restart.
func TestSnapshotSendsToAFullNodeBackOff(t *testing.T) {
	const plenty, none = 100 << 30, 1 << 20
	free := map[string]*atomic.Int64{}
	for i := range 3 {
		free[fmt.Sprintf("n%d", i+1)] = new(atomic.Int64)
		free[fmt.Sprintf("n%d", i+1)].Store(plenty)
	}
	tc := newTestCluster(t, 3, func(c *Config) {
		id := c.NodeID
		c.MinFreeBytes, c.DiskResumeBytes = 1<<30, 1<<20
		c.freeSpace = func(string) (int64, error) { return free[id].Load(), nil }
		c.TrailingLogs = 8
	})
	l := tc.leader()
	fi := 0
	for i, n := range tc.nodes {
		if n != l {
			fi = i
			break
		}
	}
	f := restartNode(t, tc, fi, func() {
		for i := range 200 {
			// Two nodes of three: a loaded machine can lose the leader
			// meanwhile; the append goes to the next one.
			for try := 0; ; try++ {
				_, err := dial(t, tc.leader()).Append(ctxT(t), &pb.AppendRequest{Events: []*pb.Event{ev("s", fmt.Sprint(i))}})
				if err == nil {
					break
				}
				if status.Code(err) != codes.Unavailable || try > 50 {
					t.Fatal(err)
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
		snapshotLive(t, tc)
		free[tc.cfgs[fi].NodeID].Store(none) // it comes back on a full disk
	})
	l = tc.leader()
	if f.diskProblem() == "" {
		t.Fatal("the restarted follower does not report its full disk")
	}
	deadline := time.Now().Add(20 * time.Second)
	for counterValue(t, l.metrics.snapshotSendsDeferred) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the leader never deferred a snapshot send to the full follower")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if f.proc.AppliedIndex() >= l.proc.AppliedIndex() {
		t.Fatalf("the full follower applied %d of %d without a snapshot", f.proc.AppliedIndex(), l.proc.AppliedIndex())
	}
	free[tc.cfgs[fi].NodeID].Store(plenty)
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	if err := f.proc.WaitApplied(ctx, l.proc.AppliedIndex()); err != nil {
		t.Fatalf("the follower did not catch up once it had space: applied %d of %d: %v", f.proc.AppliedIndex(), l.proc.AppliedIndex(), err)
	}
}

// An append RPC carries entries up to the byte bound (at least one), and
// the commit index it sends is never past its last entry.
func TestBoundAppend(t *testing.T) {
	entries := func(sizes ...int) []*raft.Log {
		var out []*raft.Log
		for i, n := range sizes {
			out = append(out, &raft.Log{Index: uint64(11 + i), Data: make([]byte, n)})
		}
		return out
	}
	for _, tt := range []struct {
		sizes      []int
		commit     uint64
		keep       int
		wantCommit uint64
	}{
		{sizes: []int{40, 40}, commit: 20, keep: 2, wantCommit: 20},     // within the bound: untouched
		{sizes: []int{40, 40, 40}, commit: 20, keep: 2, wantCommit: 12}, // cut after 80 bytes, commit capped
		{sizes: []int{500, 10}, commit: 12, keep: 1, wantCommit: 11},    // one entry over the bound still goes
		{sizes: []int{40, 40, 40}, commit: 11, keep: 2, wantCommit: 11}, // a commit index already below stays
		{sizes: nil, commit: 20, keep: 0, wantCommit: 20},               // a heartbeat
	} {
		args := &raft.AppendEntriesRequest{Entries: entries(tt.sizes...), LeaderCommitIndex: tt.commit}
		cut := boundAppend(args, 100)
		if len(args.Entries) != tt.keep || args.LeaderCommitIndex != tt.wantCommit || cut != (tt.keep < len(tt.sizes)) {
			t.Errorf("sizes %v commit %d: kept %d entries, commit %d, cut %v; want %d, %d",
				tt.sizes, tt.commit, len(args.Entries), args.LeaderCommitIndex, cut, tt.keep, tt.wantCommit)
		}
	}
}

// A follower that catches up on a log of large entries gets them in RPCs
// of at most max-inflight-bytes (plus one entry), not raft's 64 entries
// at a time, and ends with the leader's log.
func TestCatchUpAppendsAreBoundedInBytes(t *testing.T) {
	tc := newTestCluster(t, 3, func(c *Config) {
		c.MaxEntryBytes = 64 << 10
		c.MaxInflightBytes = 128 << 10 // two to three entries per RPC
	})
	fi := tc.followerIndex()
	var next uint64
	restartNode(t, tc, fi, func() {
		next = appendBatches(t, tc, "catchup", 60) // 60 requests of ~4.5 KiB
		for i := range 40 {                        // and 40 of ~60 KiB
			evs := []*pb.Event{ev("run/big", strings.Repeat(fmt.Sprint(i%10), 60<<10))}
			for try := 0; ; try++ {
				resp, err := dial(t, tc.leader()).Append(ctxT(t), &pb.AppendRequest{Events: evs})
				if err == nil {
					next = resp.LastOffset + 1
					break
				}
				if status.Code(err) != codes.Unavailable || try > 50 {
					t.Fatal(err)
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
	})
	waitNextOffset(t, tc.nodes, next)
	l := tc.leader()
	if split := counterValue(t, l.metrics.raftAppendsSplit); split == 0 {
		t.Fatal("the leader sent the catching-up follower its ~2.6 MiB of entries without cutting an RPC to 128 KiB")
	}
	local := &pb.ReadRequest{FromOffset: 0, ToOffset: next, Consistency: pb.Consistency_CONSISTENCY_LOCAL}
	want := readAll(t, dial(t, l), local)
	got := readAll(t, dial(t, tc.nodes[fi]), local)
	if len(want) != int(next) || len(got) != len(want) {
		t.Fatalf("the follower holds %d events, the leader %d, want %d", len(got), len(want), next)
	}
	for off, p := range want {
		if got[off] != p {
			t.Fatalf("offset %d differs between the leader and the follower that caught up", off)
		}
	}
}

// Raft handles heartbeats on the transport's goroutines. Once the node's
// heartbeat guard is closed (Node.Close, before the stores close), a
// heartbeat no longer reaches raft and is answered with an error, and
// closing waits for a heartbeat raft is handling.
func TestHeartbeatGuard(t *testing.T) {
	listen := func() *raft.NetworkTransport {
		tr, err := raft.NewTCPTransport("127.0.0.1:0", nil, 2, 5*time.Second, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tr.Close() })
		return tr
	}
	target, sender := listen(), listen()
	n := &Node{hbGuard: new(heartbeatGuard)}
	entered, release := make(chan struct{}, 1), make(chan struct{})
	var handled atomic.Int64
	snapGuard{NetworkTransport: target, n: n}.SetHeartbeatHandler(func(rpc raft.RPC) {
		handled.Add(1)
		entered <- struct{}{}
		<-release
		rpc.Respond(&raft.AppendEntriesResponse{Success: true}, nil)
	})
	heartbeat := func() error {
		return sender.AppendEntries("target", target.LocalAddr(),
			&raft.AppendEntriesRequest{RPCHeader: raft.RPCHeader{ID: []byte("leader"), Addr: []byte(sender.LocalAddr())}, Term: 2},
			new(raft.AppendEntriesResponse))
	}
	done := make(chan error, 1)
	go func() { done <- heartbeat() }()
	<-entered
	closed := make(chan struct{})
	go func() { n.hbGuard.close(); close(closed) }()
	select {
	case <-closed:
		t.Fatal("the guard closed while raft was handling a heartbeat")
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	<-closed
	if err := <-done; err != nil {
		t.Fatalf("the heartbeat in progress: %v", err)
	}
	if err := heartbeat(); err == nil || !strings.Contains(err.Error(), raft.ErrTransportShutdown.Error()) {
		t.Fatalf("a heartbeat after close: %v, want %v", err, raft.ErrTransportShutdown)
	}
	if got := handled.Load(); got != 1 {
		t.Fatalf("raft handled %d heartbeats, want the 1 before close", got)
	}
}
