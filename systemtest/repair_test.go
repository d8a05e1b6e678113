package systemtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/tsstore/tsstore/client"
	pb "github.com/tsstore/tsstore/proto/tsstorev1"
)

// TestBitrotOnLeaderIsRepaired snapshots the leader of three real nodes,
// stops it and rots two of its sealed segments: one where Open looks (its
// last batch; this used to make the node refuse to start) and one in the
// middle of another, which only a read finds. The node starts, serves,
// and repairs both from its peers: a full read of its log then succeeds
// and is byte-identical to a healthy node's, and so are the segment
// files. (Without the snapshot the node repairs both before it starts,
// as server.TestDamagedSegmentAtOpenIsRepaired shows.)
func TestBitrotOnLeaderIsRepaired(t *testing.T) {
	c := startCluster(t, "--segment-bytes", "65536")
	leader := waitLeader(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p := newClient(t, c.APIAddrs()).NewProducer("bitrot")
	var last uint64
	for i := range 150 {
		var evs []client.Event
		for j := range 10 {
			evs = append(evs, client.Event{Stream: fmt.Sprintf("run/%d", j%3), Type: "Step", Payload: []byte(strings.Repeat("b", 300))})
		}
		res, err := p.Append(ctx, evs...)
		if err != nil {
			t.Fatalf("append %d: %v", i, err)
		}
		last = res.LastOffset
	}
	waitCaughtUp(t, c, last+1)
	// A snapshot checkpoints the leader's state past the rotted segments,
	// so it starts without reading them: one is kept as damaged at open,
	// the other is found by a read.
	conn, err := grpc.NewClient(leader.APIAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	_, err = pb.NewClusterClient(conn).Snapshot(ctx, &pb.SnapshotRequest{})
	conn.Close()
	if err != nil {
		t.Fatal(err)
	}
	if err := leader.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	logs, _ := filepath.Glob(filepath.Join(leader.DataDir, "fsm", "log", "*.log"))
	sort.Strings(logs)
	if len(logs) < 5 {
		t.Fatalf("%d segment files, want at least 5", len(logs))
	}
	atOpen, onRead := logs[1], logs[3]
	flip(t, atOpen, -5)
	flip(t, onRead, 0)
	if err := leader.Start(); err != nil {
		t.Fatal(err)
	}
	waitCaughtUp(t, c, last+1)
	var healthy = c.Nodes[0]
	if healthy == leader {
		healthy = c.Nodes[1]
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		err := readAll(ctx, leader.APIAddr, last+1)
		if err == nil {
			break
		}
		if status.Code(err) != codes.DataLoss || time.Now().After(deadline) {
			t.Fatalf("read of the rotted node: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got, want := readRaw(t, leader.APIAddr, last+1), readRaw(t, healthy.APIAddr, last+1); got.hash != want.hash || len(got.records) != int(last+1) {
		t.Fatalf("the repaired node's log %s (%d records) differs from %s's %s", got.hash, len(got.records), healthy.ID, want.hash)
	}
	for _, path := range []string{atOpen, onRead} {
		mine, _ := os.ReadFile(path)
		theirs, _ := os.ReadFile(strings.Replace(path, leader.DataDir, healthy.DataDir, 1))
		if !bytes.Equal(mine, theirs) {
			t.Fatalf("%s differs from %s's copy", filepath.Base(path), healthy.ID)
		}
	}
	logs = strings.Split(leader.Logs(), "\n")
	if n := len(slices.DeleteFunc(logs, func(l string) bool { return !strings.Contains(l, "damaged segment repaired with a peer's copy") })); n != 2 {
		t.Fatalf("%d repairs logged, want 2", n)
	}
	if strings.Contains(leader.Logs(), "before the start") {
		t.Fatal("the node repaired before it started; it should have served and repaired in the background")
	}
}

// flip flips one bit of a file in place, at pos (from the end if < 0, the
// middle if 0).
func flip(t *testing.T, path string, pos int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	switch {
	case pos < 0:
		pos += fi.Size()
	case pos == 0:
		pos = fi.Size() / 2
	}
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, pos); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x10
	if _, err := f.WriteAt(b, pos); err != nil {
		t.Fatal(err)
	}
}

// readAll reads [0, to) from one node and returns the first error.
func readAll(ctx context.Context, addr string, to uint64) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
	if err != nil {
		return err
	}
	defer conn.Close()
	stream, err := pb.NewEventStoreClient(conn).Read(ctx, &pb.ReadRequest{ToOffset: to, MinNextOffset: to})
	if err != nil {
		return err
	}
	for {
		if _, err := stream.Recv(); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}
