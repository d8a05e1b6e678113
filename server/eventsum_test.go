package server

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/tsstore/tsstore/fsm"
	pb "github.com/tsstore/tsstore/proto/tsstorev1"
	"github.com/tsstore/tsstore/record"
	"github.com/tsstore/tsstore/segment"
)

func eventsSum(evs []*pb.Event) uint32 {
	var sum uint32
	for _, e := range evs {
		sum = record.AddEvent(sum, e.Stream, e.Type, e.Metadata, e.Payload)
	}
	return sum
}

// The leader checks the producer's checksum before proposing.
func TestAppendChecksumIsChecked(t *testing.T) {
	tc := newTestCluster(t, 1, nil)
	c := dial(t, tc.leader())
	evs := []*pb.Event{ev("s", "one"), ev("s", "two")}
	sum := eventsSum(evs)
	if _, err := c.Append(ctxT(t), &pb.AppendRequest{Events: evs, EventsCrc32C: &sum}); err != nil {
		t.Fatalf("append with its checksum: %v", err)
	}
	wrong := sum ^ 1
	_, err := c.Append(ctxT(t), &pb.AppendRequest{Events: []*pb.Event{ev("s", "three")}, EventsCrc32C: &wrong})
	if code, r := reason(err); code != codes.DataLoss || r != pb.ErrorReason_ERROR_REASON_CHECKSUM_MISMATCH.String() {
		t.Fatalf("append with a wrong checksum: %v", err)
	}
	if got := readAll(t, c, &pb.ReadRequest{}); len(got) != 2 {
		t.Fatalf("log %v: the refused append was written", got)
	}
}

// A bit flipped in the leader's Raft log inside an event's payload, read
// back to catch up a follower, never becomes a follower with different
// bytes: the follower checks the event checksum and stops applying.
func TestFlippedBitInRaftLogStopsTheFollower(t *testing.T) {
	tc := newTestCluster(t, 3, func(c *Config) { c.LogCacheBytes = 0 })
	l := tc.leader()
	c := dial(t, l)
	var fi int
	for i, n := range tc.nodes {
		if n != l {
			fi = i
		}
	}
	fcfg := tc.nodes[fi].cfg
	tc.nodes[fi].Close()
	tc.nodes[fi] = nil
	marker := bytes.Repeat([]byte("Z"), 64)
	if _, err := c.Append(ctxT(t), &pb.AppendRequest{Events: []*pb.Event{{Stream: "run/x", Type: "Step", Payload: marker}}}); err != nil {
		t.Fatal(err)
	}
	// Flip one bit of the payload in the leader's raft-wal files.
	files, _ := filepath.Glob(filepath.Join(l.cfg.DataDir, "raft", walDirName, "*.wal"))
	flipped := false
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if at := bytes.Index(b, marker); at >= 0 {
			// One byte written in place: rewriting the whole file would race
			// with the leader appending to it.
			fh, err := os.OpenFile(f, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			_, err = fh.WriteAt([]byte{b[at+10] ^ 0x01}, int64(at+10))
			fh.Close()
			if err != nil {
				t.Fatal(err)
			}
			flipped = true
		}
	}
	if !flipped {
		t.Fatal("payload not found in the leader's raft log")
	}
	n, err := New(fcfg)
	if err != nil {
		t.Fatal(err)
	}
	tc.nodes[fi] = n
	deadline := time.Now().Add(30 * time.Second)
	for n.proc.Failed() == nil && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if err := n.proc.Failed(); !errors.Is(err, fsm.ErrChecksumMismatch) {
		t.Fatalf("follower applying a damaged entry: %v, want ErrChecksumMismatch (follower applied %d, next offset %d; leader next offset %d)",
			err, n.proc.AppliedIndex(), n.proc.NextOffset(), l.proc.NextOffset())
	}
	// Nothing of the damaged event is in the follower's segments.
	n.proc.WithLog(func(lg *segment.Log) error {
		return lg.Scan(0, func(b record.Batch) error {
			if bytes.Contains(b, marker[:10]) {
				t.Error("the follower wrote the damaged event")
			}
			return nil
		})
	})
}
