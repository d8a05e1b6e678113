package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	pb "github.com/tsstore/tsstore/proto/tsstorev1"
	"github.com/tsstore/tsstore/segment"
)

// repairPayload makes events large enough to fill 64 KiB segments fast.
var repairPayload = strings.Repeat("p", 400)

// appendBatches appends n requests of 10 events each through the leader
// and returns the log's next offset after them.
func appendBatches(t *testing.T, tc *testCluster, producer string, n int) uint64 {
	t.Helper()
	var last uint64
	for i := range n {
		evs := make([]*pb.Event, 10)
		for j := range evs {
			evs[j] = ev(fmt.Sprintf("run/%d", j%3), repairPayload)
		}
		req := &pb.AppendRequest{ProducerId: producer, ProducerSeq: uint64(10*i + 1), Events: evs}
		for try := 0; ; try++ {
			resp, err := dial(t, tc.leader()).Append(ctxT(t), req)
			if err == nil {
				last = resp.LastOffset
				break
			}
			if status.Code(err) != codes.Unavailable || try > 50 {
				t.Fatal(err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return last + 1
}

// waitNextOffset waits until every running node has applied up to next.
func waitNextOffset(t *testing.T, nodes []*Node, next uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, n := range nodes {
		if n == nil {
			continue
		}
		if err := n.proc.WaitNextOffset(ctx, next); err != nil {
			t.Fatalf("%s did not reach offset %d (at %d): %v", n.cfg.NodeID, next, n.proc.NextOffset(), err)
		}
	}
}

// sealedSegments returns a node's sealed segments.
func sealedSegments(t *testing.T, n *Node) []segment.SegmentInfo {
	t.Helper()
	var out []segment.SegmentInfo
	if err := n.proc.WithLog(func(l *segment.Log) error {
		for _, s := range l.Segments() {
			if s.Sealed {
				out = append(out, s)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// flipInPlace flips one bit of a file at pos without replacing the file,
// as bit rot does: hard links (snapshots) see it too.
func flipInPlace(t *testing.T, path string, pos int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b [1]byte
	if _, err := f.ReadAt(b[:], pos); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x04
	if _, err := f.WriteAt(b[:], pos); err != nil {
		t.Fatal(err)
	}
}

// readRange reads [from, to) through n's API and returns the first error.
func readRange(t *testing.T, n *Node, from, to uint64) error {
	t.Helper()
	stream, err := dial(t, n).Read(ctxT(t), &pb.ReadRequest{FromOffset: from, ToOffset: to})
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

// sameFile fails unless the two files hold the same bytes.
func sameFile(t *testing.T, a, b string) {
	t.Helper()
	x, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	y, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(x, y) {
		t.Fatalf("%s (%d bytes) and %s (%d bytes) differ", a, len(x), b, len(y))
	}
}

// waitRepaired waits until a read of the segment's range through n
// succeeds: the first read after the damage schedules the repair.
func waitRepaired(t *testing.T, n *Node, seg segment.SegmentInfo) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := readRange(t, n, seg.BaseOffset, seg.NextOffset)
		if err == nil {
			return
		}
		if status.Code(err) != codes.DataLoss {
			t.Fatalf("read of the damaged range on %s: %v, want DataLoss until repaired", n.cfg.NodeID, err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not repair segment %d: %v", n.cfg.NodeID, seg.BaseOffset, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func repairsCounted(n *Node, result string) float64 {
	var m dto.Metric
	if err := n.metrics.repairs.WithLabelValues(result).Write(&m); err != nil {
		return -1
	}
	return m.GetCounter().GetValue()
}

func smallSegments(c *Config) { c.Segment.SegmentBytes = 64 << 10 }

// TestReadRepairsDamagedSegment flips a bit in a sealed segment on the
// leader, then in another one on a follower: a read of the damaged range
// fails with DataLoss and schedules a repair, after which the read
// succeeds and the node's file is byte-identical to a healthy peer's; the
// metric counts each repair.
func TestReadRepairsDamagedSegment(t *testing.T) {
	tc := newTestCluster(t, 3, smallSegments)
	next := appendBatches(t, tc, "repair-read", 60)
	waitNextOffset(t, tc.nodes, next)
	leader := tc.leader()
	for k, target := range []*Node{leader, tc.follower()} {
		segs := sealedSegments(t, target)
		if len(segs) < 4 {
			t.Fatalf("%s has %d sealed segments, want at least 4", target.cfg.NodeID, len(segs))
		}
		seg := segs[1+k]
		var healthy *Node
		for _, n := range tc.nodes {
			if n != target {
				healthy = n
			}
		}
		healthyPath := strings.Replace(seg.Path, target.cfg.DataDir, healthy.cfg.DataDir, 1)
		flipInPlace(t, seg.Path, seg.Size/2)
		err := readRange(t, target, seg.BaseOffset, seg.NextOffset)
		if status.Code(err) != codes.DataLoss {
			t.Fatalf("read of the damaged range on %s: %v, want DataLoss", target.cfg.NodeID, err)
		}
		waitRepaired(t, target, seg)
		sameFile(t, seg.Path, healthyPath)
		if err := target.proc.WithLog(func(l *segment.Log) error { return l.Verify(nil) }); err != nil {
			t.Fatalf("%s: Verify after the repair: %v", target.cfg.NodeID, err)
		}
		// The repair counts itself just after the swap that let the read
		// through.
		for deadline := time.Now().Add(10 * time.Second); repairsCounted(target, repairRepaired) != 1; time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: tsstore_segment_repairs_total{result=repaired} = %v, want 1", target.cfg.NodeID, repairsCounted(target, repairRepaired))
			}
		}
		if got := target.damagedCount(); got != 0 {
			t.Fatalf("%s: %d segments still counted damaged", target.cfg.NodeID, got)
		}
	}
	// The cluster goes on.
	next = appendBatches(t, tc, "repair-read-2", 5)
	waitNextOffset(t, tc.nodes, next)
}

// TestDamagedSegmentAtOpenIsRepaired damages the last batch of a sealed
// segment of a stopped follower, where Open looks: the node used to refuse
// to start. With a checkpoint past the segment (a snapshot was taken), it
// now starts, serves, and repairs the segment in the background. Without
// one, the FSM needs the segment to rebuild its state: the node repairs it
// from a peer (found in its recorded node table) before it starts.
func TestDamagedSegmentAtOpenIsRepaired(t *testing.T) {
	for _, snapshot := range []bool{true, false} {
		t.Run(fmt.Sprintf("snapshot=%v", snapshot), func(t *testing.T) {
			testDamagedSegmentAtOpen(t, snapshot)
		})
	}
}

func testDamagedSegmentAtOpen(t *testing.T, snapshot bool) {
	tc := newTestCluster(t, 3, smallSegments)
	next := appendBatches(t, tc, "repair-open", 60)
	waitNextOffset(t, tc.nodes, next)
	f := tc.follower()
	if snapshot {
		// A snapshot writes the FSM checkpoint past the segment, so the
		// start does not need to read it to rebuild the state.
		if _, err := dialCluster(t, f).Snapshot(ctxT(t), &pb.SnapshotRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	seg := sealedSegments(t, f)[1]
	var i int
	for i = range tc.nodes {
		if tc.nodes[i] == f {
			break
		}
	}
	healthyPath := strings.Replace(seg.Path, f.cfg.DataDir, tc.leader().cfg.DataDir, 1)
	f.Close()
	tc.nodes[i] = nil
	flipInPlace(t, seg.Path, seg.Size-5)
	if _, err := segment.Open(filepath.Dir(seg.Path), tc.cfgs[i].Segment); !errors.Is(err, segment.ErrCorrupt) {
		t.Fatalf("the damage is not where Open looks: %v", err)
	}
	var steps []string
	cfg := tc.cfgs[i]
	cfg.OnOpen = func(step string) { steps = append(steps, step) }
	n, err := New(cfg)
	if err != nil {
		t.Fatalf("restart with a damaged sealed segment: %v", err)
	}
	tc.nodes[i] = n
	if before := slices.Contains(steps, "repairing damaged segments from a peer"); before == snapshot {
		t.Fatalf("repaired before the start: %v, want %v (steps %q)", before, !snapshot, steps)
	}
	deadline := time.Now().Add(30 * time.Second)
	for len(n.proc.Damaged()) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("segment still damaged: %v", n.proc.Damaged())
		}
		time.Sleep(50 * time.Millisecond)
	}
	sameFile(t, seg.Path, healthyPath)
	if err := readRange(t, n, seg.BaseOffset, seg.NextOffset); err != nil {
		t.Fatalf("read after the repair: %v", err)
	}
	// The counter moves just after the swap that Damaged saw.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		got := repairsCounted(n, repairRepaired)
		if got == 1 {
			break
		}
		if got > 1 || time.Now().After(deadline) {
			t.Fatalf("repairs counted %v, want 1", got)
		}
	}
	next = appendBatches(t, tc, "repair-open-2", 5)
	waitNextOffset(t, tc.nodes, next)
}

// TestFollowerCatchesUpWhileLeaderSegmentDamaged: a follower is down
// while the leader snapshots and compacts its Raft log, so it can only
// catch up through InstallSnapshot; meanwhile a sealed segment on the
// leader rots (in place, so the snapshot's hard link rots too). The
// leader must not ship the bad bytes: its send fails on them, it repairs
// the segment from the other follower and relinks its snapshot, and the
// lagging follower catches up with a log identical to the healthy nodes'.
func TestFollowerCatchesUpWhileLeaderSegmentDamaged(t *testing.T) {
	testCatchUpWithDamage(t, false)
}

// TestFollowerCatchesUpWhileLeaderSnapshotDamaged is the same with the
// rot only in the leader's snapshot (its link to the segment replaced by
// a damaged copy), the log's file intact: the send fails on the bad
// bytes, the segment checks out healthy, and the leader rebuilds the
// snapshot from its log (same index and term, a new id) for the next
// attempt.
func TestFollowerCatchesUpWhileLeaderSnapshotDamaged(t *testing.T) {
	testCatchUpWithDamage(t, true)
}

// damageSnapshotCopy replaces the newest snapshot's link to seg (the
// segment at index i of the log) with a damaged copy of the file.
func damageSnapshotCopy(t *testing.T, n *Node, i int) string {
	t.Helper()
	metas, err := n.snaps.List()
	if err != nil || len(metas) == 0 {
		t.Fatalf("no snapshot: %v", err)
	}
	link := filepath.Join(n.cfg.DataDir, "snapshots", metas[0].ID, fmt.Sprintf("%06d.seg", i))
	b, err := os.ReadFile(link)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x04
	if err := os.WriteFile(link+".x", b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(link+".x", link); err != nil {
		t.Fatal(err)
	}
	return metas[0].ID
}

func testCatchUpWithDamage(t *testing.T, snapshotOnly bool) {
	tc := newTestCluster(t, 3, func(c *Config) {
		smallSegments(c)
		c.SnapshotThreshold, c.TrailingLogs, c.SnapshotInterval = 32, 8, 100*time.Millisecond
		// The node whose segment is damaged must be the one that sends
		// the snapshot: a leader that steps down on a loaded machine (the
		// tests' 100 ms lease) would leave the send to a healthy peer.
		c.HeartbeatTimeout, c.ElectionTimeout, c.LeaderLeaseTimeout = time.Second, time.Second, time.Second
	})
	next := appendBatches(t, tc, "repair-snap", 5)
	waitNextOffset(t, tc.nodes, next)
	f := tc.follower()
	var i int
	for i = range tc.nodes {
		if tc.nodes[i] == f {
			break
		}
	}
	applied := f.proc.AppliedIndex()
	f.Close()
	tc.nodes[i] = nil
	next = appendBatches(t, tc, "repair-snap-2", 120)
	waitNextOffset(t, tc.nodes, next)
	leader := tc.leader() // the one that will send the snapshot
	deadline := time.Now().Add(30 * time.Second)
	for {
		first, err := leader.logs.FirstIndex()
		if err == nil && first > applied+1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the leader's raft log still starts at %d, the follower applied %d", first, applied)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := dialCluster(t, leader).Snapshot(ctxT(t), &pb.SnapshotRequest{}); err != nil {
		t.Fatal(err)
	}
	segs := sealedSegments(t, leader)
	seg := segs[len(segs)-2]
	var damagedSnap string
	if snapshotOnly {
		damagedSnap = damageSnapshotCopy(t, leader, len(segs)-2)
	} else {
		flipInPlace(t, seg.Path, seg.Size/2)
	}

	n, err := New(tc.cfgs[i])
	if err != nil {
		t.Fatal(err)
	}
	tc.nodes[i] = n
	waitNextOffset(t, []*Node{n}, next)
	// The leader's log starts past what the follower had: only a snapshot
	// could bring it here. Raft records the install once it is done.
	for deadline := time.Now().Add(10 * time.Second); n.raft.Stats()["last_snapshot_index"] == "0"; {
		if time.Now().After(deadline) {
			t.Fatalf("the follower did not install a snapshot: %v", n.raft.Stats())
		}
		time.Sleep(20 * time.Millisecond)
	}
	wantRepairs := 1.0
	if snapshotOnly {
		wantRepairs = 0 // the log's copy was never damaged
		// The leader replaces it by a good snapshot and removes it; on a
		// loaded machine that may finish after the follower's install.
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			metas, _ := leader.snaps.List()
			newest := len(metas) > 0 && metas[0].ID == damagedSnap
			gone := errors.Is(leader.checkSnapshot(damagedSnap), fs.ErrNotExist)
			if !newest && gone {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the damaged snapshot %s: still the newest %v, still there %v", damagedSnap, newest, !gone)
			}
		}
	}
	// The leader repairs its segment from a peer as it finds it damaged,
	// beside the install: on a loaded machine the count may come after.
	for deadline := time.Now().Add(10 * time.Second); repairsCounted(leader, repairRepaired) != wantRepairs; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("leader %s (now %s) repairs counted %v, want %v", leader.cfg.NodeID, tc.leader().cfg.NodeID, repairsCounted(leader, repairRepaired), wantRepairs)
		}
	}
	for _, m := range tc.nodes {
		if m != leader {
			sameFile(t, seg.Path, strings.Replace(seg.Path, leader.cfg.DataDir, m.cfg.DataDir, 1))
		}
	}
	if err := n.proc.WithLog(func(l *segment.Log) error { return l.Verify(nil) }); err != nil {
		t.Fatalf("the caught-up follower's log: %v", err)
	}
	next = appendBatches(t, tc, "repair-snap-3", 5)
	waitNextOffset(t, tc.nodes, next)
}

// TestRepairWithTLSAndTokens: with mutual TLS between nodes and tokens
// on, RepairSegments needs an admin token, FetchSegment is for nodes only
// (an admin token is refused), and a repair asked for by an operator
// fetches the good copy from a peer as a node.
func TestRepairWithTLSAndTokens(t *testing.T) {
	p := newTestPKI(t)
	tokens := testTokens(t)
	tc := newTestCluster(t, 3, func(c *Config) {
		p.secure(t, c, true)
		c.AuthTokensFile = tokens
		smallSegments(c)
	})
	ctx := ctxT(t)
	creds := credentials.NewTLS(trust(t, p.ca, nil))
	es := pb.NewEventStoreClient(dialWith(t, tc.leader().APIAddr(), creds))
	var last uint64
	for i := range 40 {
		evs := make([]*pb.Event, 10)
		for j := range evs {
			evs[j] = ev("run/tls", repairPayload)
		}
		req := &pb.AppendRequest{ProducerId: "repair-tls", ProducerSeq: uint64(10*i + 1), Events: evs}
		err := retryUnavailable(ctx, func() error {
			resp, err := es.Append(withToken(ctx, appendTok), req)
			if err == nil {
				last = resp.LastOffset
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	waitNextOffset(t, tc.nodes, last+1)
	f := tc.follower()
	seg := sealedSegments(t, f)[1]
	flipInPlace(t, seg.Path, seg.Size/2)

	rc := pb.NewRepairClient(dialWith(t, f.APIAddr(), creds))
	_, err := rc.RepairSegments(withToken(ctx, readTok), &pb.RepairSegmentsRequest{})
	wantStatus(t, err, codes.PermissionDenied, "admin")
	stream, err := rc.FetchSegment(withToken(ctx, adminTok), &pb.FetchSegmentRequest{BaseOffset: seg.BaseOffset})
	if err == nil {
		_, err = stream.Recv()
	}
	wantStatus(t, err, codes.PermissionDenied, "node")

	resp, err := rc.RepairSegments(withToken(ctx, adminTok), &pb.RepairSegmentsRequest{BaseOffsets: []uint64{seg.BaseOffset}})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Segments) != 1 || resp.Segments[0].Result != repairRepaired || resp.Segments[0].FromNodeId == f.cfg.NodeID {
		t.Fatalf("RepairSegments: %v", resp)
	}
	sameFile(t, seg.Path, strings.Replace(seg.Path, f.cfg.DataDir, tc.leader().cfg.DataDir, 1))
}

// TestFetchReaderChecksTheWholeFile: the bytes of a FetchSegment stream
// reach ReplaceSealed only with an io.EOF that vouches for them: the
// stream must end with the whole file's CRC-32C, and the size and sum
// must match what the peer announced.
func TestFetchReaderChecksTheWholeFile(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789"), 1000)
	sum := crc32.Checksum(data, castagnoli)
	bad := sum ^ 1
	for _, tc := range []struct {
		name string
		msgs []*pb.FetchSegmentResponse
		size int
		want string
	}{
		{"whole", []*pb.FetchSegmentResponse{{Data: data[:4000]}, {Data: data[4000:]}, {FileCrc32C: &sum}}, len(data), ""},
		{"no checksum", []*pb.FetchSegmentResponse{{Data: data}}, len(data), "without the file's checksum"},
		{"wrong checksum", []*pb.FetchSegmentResponse{{Data: data}, {FileCrc32C: &bad}}, len(data), "CRC-32C"},
		{"short", []*pb.FetchSegmentResponse{{Data: data[:9000]}, {FileCrc32C: &sum}}, len(data), "announced"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msgs := tc.msgs
			r := &fetchReader{size: int64(tc.size), crc: crc32.New(castagnoli), recv: func() (*pb.FetchSegmentResponse, error) {
				if len(msgs) == 0 {
					return nil, io.EOF
				}
				m := msgs[0]
				msgs = msgs[1:]
				return m, nil
			}}
			got, err := io.ReadAll(r)
			switch {
			case tc.want == "" && (err != nil || !bytes.Equal(got, data)):
				t.Fatalf("read %d bytes, %v", len(got), err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
}

// TestRepairSkipsPeersWithDamagedCopies damages the same sealed segment
// on two nodes: a read on one repairs it from the only healthy copy (a
// peer whose copy is damaged refuses to send it and is skipped), and the
// other damaged peer, which found its damage when asked, repairs itself.
// Then the segment is damaged on every node: no repair can succeed, the
// read keeps failing with DataLoss, and the failure is counted.
func TestRepairSkipsPeersWithDamagedCopies(t *testing.T) {
	tc := newTestCluster(t, 3, smallSegments)
	next := appendBatches(t, tc, "repair-skip", 60)
	waitNextOffset(t, tc.nodes, next)
	a, b := tc.nodes[0], tc.nodes[1]
	healthy := tc.nodes[2]
	seg := sealedSegments(t, a)[2]
	pathOn := func(n *Node) string { return strings.Replace(seg.Path, a.cfg.DataDir, n.cfg.DataDir, 1) }
	flipInPlace(t, pathOn(a), seg.Size/2)
	flipInPlace(t, pathOn(b), seg.Size/3)
	waitRepaired(t, a, seg)
	sameFile(t, pathOn(a), pathOn(healthy))
	// b learns of its damage when a asks it (if it asked b first) or when
	// it is read; read it to be sure, and it repairs too.
	waitRepaired(t, b, seg)
	sameFile(t, pathOn(b), pathOn(healthy))

	for i, n := range tc.nodes {
		flipInPlace(t, pathOn(n), seg.Size/4+int64(i))
	}
	if err := readRange(t, a, seg.BaseOffset, seg.NextOffset); status.Code(err) != codes.DataLoss {
		t.Fatalf("read with every copy damaged: %v, want DataLoss", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for repairsCounted(a, repairFailed) < 1 {
		if time.Now().After(deadline) {
			t.Fatal("no failed repair counted")
		}
		time.Sleep(50 * time.Millisecond)
	}
	r := a.repairSegment(ctxT(t), seg.BaseOffset, "")
	if r.Result != repairFailed || !strings.Contains(r.Error, "no peer had a good copy") {
		t.Fatalf("repair with every copy damaged: %v", r.SegmentRepair)
	}
	if a.damagedCount() == 0 {
		t.Fatal("the damaged segment is not counted in tsstore_segments_damaged")
	}
	if err := readRange(t, a, seg.BaseOffset, seg.NextOffset); status.Code(err) != codes.DataLoss {
		t.Fatalf("read after the failed repairs: %v, want DataLoss", err)
	}
}
