package jepsen

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/tsstore/tsstore/internal/proccluster"
	pb "github.com/tsstore/tsstore/proto/tsstorev1"
)

// corrupt stops a follower cleanly, flips a bit in (or truncates) one of
// its segment files, and restarts it. The node must then either refuse to
// start, refuse to serve the damaged range (DataLoss), have repaired a
// damaged sealed segment with a peer's copy, or have cut the damage off
// its active segment's tail and re-applied it from the Raft log. It must
// never serve or replicate the corrupt bytes: reads of it are
// checked by the probe here and by the final replica comparison. A node
// that detected the damage is wiped and rejoins.
//
// With raftLog, the damage goes into the node's Raft log (raft-wal's
// segment files) instead: a flipped bit there must be caught by raft-wal's
// CRC at start (a torn tail, dropped) or by the end-to-end event checksum
// when the entry is applied (the node stops), never applied as other bytes.
func (n *nemesis) corrupt(ctx context.Context, d time.Duration, f *Fault, role string, raftLog bool) {
	t := n.pick(ctx, role)
	f.Target = t.ID
	if err := t.Stop(10 * time.Second); err != nil {
		f.Detail = err.Error()
		return
	}
	var what string
	var err error
	if raftLog {
		what, err = n.flipRaftLog(filepath.Join(t.DataDir, "raft", "wal"))
	} else {
		what, err = n.damage(filepath.Join(t.DataDir, "fsm", "log"))
	}
	if role == "leader" {
		what = "leader: " + what
	}
	if err != nil {
		f.Detail = "no damage done: " + err.Error()
		t.Start()
		return
	}
	f.Detail = what
	if err := t.Start(); err != nil {
		f.Detail += "; " + err.Error()
		return
	}
	sleepCtx(ctx, d)
	verdict, detected := n.probe(ctx, t)
	f.Detail += "; " + verdict
	if !detected {
		return
	}
	t.Kill()
	f.Detail += "; " + errText(t.Wipe(), "wiped")
	f.Detail += "; " + errText(t.Start(), "rejoined")
}

// damage flips one bit of, or truncates, a random non-empty segment file.
func (n *nemesis) damage(dir string) (string, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.log"))
	if err != nil {
		return "", err
	}
	var sizes []int64
	var paths []string
	for _, p := range files {
		if fi, err := os.Stat(p); err == nil && fi.Size() > 64 {
			paths, sizes = append(paths, p), append(sizes, fi.Size())
		}
	}
	if len(paths) == 0 {
		return "", errors.New("no segment file to damage in " + dir)
	}
	i, truncate := n.rng.IntN(len(paths)), n.rng.Float64() < 0.3
	path, size := paths[i], sizes[i]
	name := filepath.Base(path)
	if truncate {
		to := size/2 + n.rng.Int64N(size-size/2)
		return fmt.Sprintf("truncated %s (%d of %d) from %d to %d bytes", name, i+1, len(paths), size, to), os.Truncate(path, to)
	}
	pos, bit := n.rng.Int64N(size), n.rng.IntN(8)
	fh, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return "", err
	}
	defer fh.Close()
	b := make([]byte, 1)
	if _, err := fh.ReadAt(b, pos); err != nil {
		return "", err
	}
	b[0] ^= 1 << bit
	if _, err := fh.WriteAt(b, pos); err != nil {
		return "", err
	}
	return fmt.Sprintf("flipped bit %d of byte %d in %s (%d of %d, %d bytes)", bit, pos, name, i+1, len(paths), size), fh.Sync()
}

// flipRaftLog flips one bit in the written part of a random raft-wal
// segment file (they are preallocated: the rest is zeros).
func (n *nemesis) flipRaftLog(dir string) (string, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.wal"))
	if err != nil || len(files) == 0 {
		return "", fmt.Errorf("no raft-wal file in %s (%v)", dir, err)
	}
	path := files[n.rng.IntN(len(files))]
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	end := len(b)
	for end > 0 && b[end-1] == 0 {
		end--
	}
	if end <= 64 {
		return "", fmt.Errorf("%s holds no entry", path)
	}
	pos, bit := 32+n.rng.IntN(end-32), n.rng.IntN(8) // past the file header
	b[pos] ^= 1 << bit
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return "", err
	}
	return fmt.Sprintf("flipped bit %d of byte %d of %d written in raft log file %s", bit, pos, end, filepath.Base(path)), nil
}

// probe decides whether a damaged node detected the damage: it exited at
// start, or a full local read of its log fails with DataLoss. A read that
// returns data is left for the final replica check to judge.
func (n *nemesis) probe(ctx context.Context, t *proccluster.Node) (verdict string, detected bool) {
	var st *pb.StatusResponse
	for end := time.Now().Add(10 * time.Second); ; {
		if !t.Running() {
			return "refused to start: " + lastError(t.Logs()), true
		}
		var err error
		if st, err = nodeStatus(ctx, t); err == nil {
			break
		}
		if time.Now().After(end) || ctx.Err() != nil {
			return "not serving after 10s: " + err.Error(), true
		}
		sleepCtx(ctx, 200*time.Millisecond)
	}
	err := readLocal(ctx, t.APIAddr, st.NextOffset)
	switch {
	case err == nil:
		return fmt.Sprintf("started; all %d local events read back intact (a sealed segment repaired from a peer, damage cut off the tail and re-applied, or not yet read)", st.NextOffset), false
	case status.Code(err) == codes.DataLoss:
		return "refused to serve the damaged range: " + err.Error(), true
	case errors.Is(err, errServedCorrupt):
		// A violation of rule 5: record it as a failed integrity read.
		now := n.rec.now()
		n.rec.read(ReadOp{Process: "probe-" + t.ID, Invoke: now, Complete: now, Outcome: Fail, Integrity: true, Err: err.Error()})
		return "SERVED CORRUPT DATA: " + err.Error(), true
	}
	return "probe read failed: " + err.Error(), false
}

// errServedCorrupt marks a read whose bytes failed the client's checks.
var errServedCorrupt = errors.New("node served data that fails the client's checks")

// readLocal reads [0, end) from one node with a local read and verifies
// every batch and the offsets' continuity; it returns the first error.
func readLocal(ctx context.Context, addr string, end uint64) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	stream, err := pb.NewEventStoreClient(conn).Read(ctx, &pb.ReadRequest{ToOffset: end})
	if err != nil {
		return err
	}
	rep := Replica{}
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := decodeInto(&rep, resp.Batches, end); err != nil {
			return fmt.Errorf("%w: %v", errServedCorrupt, err)
		}
		if len(rep.Gaps) > 0 {
			return fmt.Errorf("%w: offsets not contiguous at %d", errServedCorrupt, rep.Gaps[0])
		}
	}
}

// lastError returns the last log line that mentions an error.
func lastError(logs string) string {
	lines := strings.Split(strings.TrimSpace(logs), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], "error") || strings.Contains(lines[i], "tsstore serve:") {
			return strings.TrimSpace(lines[i])
		}
	}
	return "(no error in its log)"
}
