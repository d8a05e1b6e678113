package server

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tsstore/tsstore/fsm"
	pb "github.com/tsstore/tsstore/proto/tsstorev1"
	"github.com/tsstore/tsstore/record"
	"github.com/tsstore/tsstore/segment"
)

// fetchBackup runs the Backup RPC against n and returns the info and the
// stream bytes.
func fetchBackup(t *testing.T, n *Node) (*pb.BackupInfo, []byte) {
	t.Helper()
	stream, err := dialCluster(t, n).Backup(ctxT(t), &pb.BackupRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var info *pb.BackupInfo
	var data bytes.Buffer
	for {
		c, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("backup from %s: %v", n.cfg.NodeID, err)
		}
		switch {
		case info == nil && c.Info == nil:
			t.Fatal("first backup message carries no info")
		case info == nil:
			info = c.Info
		case c.Info != nil:
			t.Fatal("info sent twice")
		default:
			data.Write(c.Data)
		}
	}
	if info == nil || uint64(data.Len()) != info.SizeBytes {
		t.Fatalf("backup: info %v, %d data bytes", info, data.Len())
	}
	return info, data.Bytes()
}

// logPrefix returns the raw batches of n's log in [0, to).
func logPrefix(t *testing.T, n *Node, to uint64) []byte {
	t.Helper()
	var out []byte
	errStop := errors.New("stop")
	err := n.proc.WithLog(func(l *segment.Log) error {
		return l.Scan(0, func(b record.Batch) error {
			if b.Header().BaseOffset >= to {
				return errStop
			}
			out = append(out, b...)
			return nil
		})
	})
	if err != nil && !errors.Is(err, errStop) {
		t.Fatal(err)
	}
	return out
}

// appendLoad appends from one producer until stop is closed and returns
// how many requests were acknowledged.
func appendLoad(t *testing.T, c pb.EventStoreClient, producer string, stop <-chan struct{}) func() int {
	var wg sync.WaitGroup
	var acked int
	wg.Add(1)
	go func() {
		defer wg.Done()
		for seq := uint64(1); ; seq++ {
			select {
			case <-stop:
				return
			default:
			}
			// Retry the same sequence while leadership moves.
			for deadline := time.Now().Add(30 * time.Second); ; {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				_, err := c.Append(ctx, &pb.AppendRequest{ProducerId: producer, ProducerSeq: seq,
					Events: []*pb.Event{ev("run/"+producer, strings.Repeat("p", 300))}})
				cancel()
				if err == nil {
					break
				}
				if time.Now().After(deadline) {
					t.Errorf("append under backup: %v", err)
					return
				}
				time.Sleep(20 * time.Millisecond)
			}
			acked++
		}
	}()
	return func() int { wg.Wait(); return acked }
}

// appendRetry appends one request through the current leader, retrying
// with the same sequence (idempotent) while leadership moves.
func appendRetry(t *testing.T, tc *testCluster, producer string, seq uint64, events ...*pb.Event) *pb.AppendResponse {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := dial(t, tc.leader()).Append(ctxT(t), &pb.AppendRequest{ProducerId: producer, ProducerSeq: seq, Events: events})
		if err == nil {
			return resp
		}
		if status.Code(err) != codes.Unavailable || time.Now().After(deadline) {
			t.Fatalf("append %s/%d: %v", producer, seq, err)
		}
	}
}

// TestBackupIsAConsistentCutUnderLoad takes a backup from a follower while
// appends run and while other snapshots reap the one being streamed, and
// checks the stream restores to exactly the leader's log up to the cut.
func TestBackupIsAConsistentCutUnderLoad(t *testing.T) {
	tc := newTestCluster(t, 3, func(c *Config) { c.Segment.SegmentBytes = 64 << 10 })
	leader, follower := tc.leader(), tc.follower()
	stop := make(chan struct{})
	done := appendLoad(t, dial(t, leader), "load", stop)
	defer func() {
		close(stop)
		if done() == 0 {
			t.Error("no append was acknowledged during the backup")
		}
	}()
	if err := follower.proc.WaitNextOffset(ctxT(t), 200); err != nil {
		t.Fatal(err)
	}
	// Snapshots racing the backup on the same node: with retain 2, two of
	// them reap the backup's snapshot while it streams.
	snapCtx, snapStop := context.WithCancel(context.Background())
	var snapWG sync.WaitGroup
	snapWG.Add(1)
	go func() {
		defer snapWG.Done()
		c := dialCluster(t, follower)
		for snapCtx.Err() == nil {
			c.Snapshot(snapCtx, &pb.SnapshotRequest{})
		}
	}()
	info, data := fetchBackup(t, follower)
	snapStop()
	snapWG.Wait()

	if info.Cluster != "tsstore" || info.NodeId != follower.cfg.NodeID || info.RaftIndex == 0 || info.RaftTerm == 0 || info.NextOffset < 200 {
		t.Fatalf("info %v", info)
	}
	si, _, err := fsm.ReadSnapshotInfo(bytes.NewReader(data))
	if err != nil || si.NextOffset != info.NextOffset || si.Index > info.RaftIndex {
		t.Fatalf("stream header %+v (%v) disagrees with info %v", si, err, info)
	}
	dst, err := fsm.Open(fsm.DefaultConfig(t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	if err := dst.Restore(bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	if err := leader.proc.WaitNextOffset(ctxT(t), info.NextOffset+1); err != nil {
		t.Fatal(err)
	}
	want := logPrefix(t, leader, info.NextOffset)
	var got []byte
	dst.WithLog(func(l *segment.Log) error {
		return l.Scan(0, func(b record.Batch) error { got = append(got, b...); return nil })
	})
	if dst.NextOffset() != info.NextOffset || !bytes.Equal(got, want) {
		t.Fatalf("restored log: next offset %d, %d bytes; leader's log up to %d: %d bytes, equal %v",
			dst.NextOffset(), len(got), info.NextOffset, len(want), bytes.Equal(got, want))
	}
}

// TestBackupClientGoneFreesStream starts a backup, reads only its info
// and goes away: the server's handler must end (closing the snapshot's
// files) instead of waiting on flow control forever.
func TestBackupClientGoneFreesStream(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	payload := strings.Repeat("z", 64<<10)
	for seq := uint64(1); seq <= 15; seq++ {
		var evs []*pb.Event
		for range 8 {
			evs = append(evs, ev("run/big", payload))
		}
		appendRetry(t, tc, "big", 8*seq-7, evs...)
	}
	leader := tc.leader()
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := dialCluster(t, leader).Backup(ctx, &pb.BackupRequest{})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil || first.Info == nil || first.Info.SizeBytes < 120*64<<10 || leader.backupsActive.Load() != 1 {
		t.Fatalf("first message %v, %v", first, err)
	}
	cancel()
	deadline := time.Now().Add(10 * time.Second)
	for leader.backupsActive.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("backup handler still running 10s after its client went away")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestSnapshotRPCWithNothingNew: a node that restarted and applied nothing
// since answers with its newest snapshot instead of an error.
func TestSnapshotRPCWithNothingNew(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	for seq := uint64(1); seq <= 10; seq++ {
		appendRetry(t, tc, "p", seq, ev("run/a", "x"))
	}
	f := tc.follower()
	i := 0
	for tc.nodes[i] != f {
		i++
	}
	if err := f.proc.WaitNextOffset(ctxT(t), 10); err != nil {
		t.Fatal(err)
	}
	first, err := dialCluster(t, f).Snapshot(ctxT(t), &pb.SnapshotRequest{})
	if err != nil || first.Index == 0 || first.Term == 0 || first.SizeBytes == 0 || first.Id == "" {
		t.Fatalf("snapshot: %v, %v", first, err)
	}
	f.Close()
	tc.nodes[i] = nil
	n, err := New(tc.cfgs[i])
	if err != nil {
		t.Fatal(err)
	}
	tc.nodes[i] = n
	again, err := dialCluster(t, n).Snapshot(ctxT(t), &pb.SnapshotRequest{})
	if err != nil {
		t.Fatalf("snapshot after a restart with nothing new: %v", err)
	}
	if again.Index < first.Index || again.Term != first.Term {
		t.Fatalf("snapshot after restart %v, before %v", again, first)
	}
	if again.Index == first.Index && again.Id != first.Id {
		t.Fatalf("nothing new, yet a new snapshot %s (before %s)", again.Id, first.Id)
	}
}

// A backup includes every append acknowledged before it started, even
// from a follower that is told of the commit only by the leader, and a
// backup of a node with a damaged sealed segment fails naming the segment
// instead of completing with bytes a restore would refuse.
func TestBackupIsCompleteOrFails(t *testing.T) {
	tc := newTestCluster(t, 3, func(c *Config) { c.Segment.SegmentBytes = 16 << 10 })
	c := dial(t, tc.leader())
	var last *pb.AppendResponse
	for i := range 60 {
		var evs []*pb.Event
		for j := range 10 {
			evs = append(evs, ev("run/b", strings.Repeat("x", 100)+string(rune('a'+(i+j)%26))))
		}
		var err error
		if last, err = c.Append(ctxT(t), &pb.AppendRequest{Events: evs}); err != nil {
			t.Fatal(err)
		}
	}
	f := tc.follower()
	info, _ := fetchBackup(t, f)
	if info.NextOffset <= last.LastOffset {
		t.Fatalf("backup from %s ends at offset %d; the last acknowledged append ends at %d", f.cfg.NodeID, info.NextOffset, last.LastOffset)
	}
	// Damage a sealed segment on the follower, below the active one.
	var sealed string
	f.proc.WithLog(func(l *segment.Log) error {
		segs := l.Segments()
		sealed = segs[0].Path
		return nil
	})
	b, err := os.ReadFile(sealed)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x20
	if err := os.WriteFile(sealed, b, 0o644); err != nil {
		t.Fatal(err)
	}
	stream, err := dialCluster(t, f).Backup(ctxT(t), &pb.BackupRequest{})
	for err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.DataLoss || !strings.Contains(err.Error(), filepath.Base(sealed)) {
		t.Fatalf("backup of a damaged segment: %v; want DataLoss naming %s", err, filepath.Base(sealed))
	}
}
