package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/tsstore/tsstore/fsm"
	pb "github.com/tsstore/tsstore/proto/tsstorev1"
	"github.com/tsstore/tsstore/segment"
)

// backupChunkBytes is the data carried by one BackupChunk message.
const backupChunkBytes = 1 << 20

// IncludeTieredMD is the gRPC request metadata key that asks Backup to
// include tiered segments' bytes (`tsstore backup --include-tiered`): any
// value but "" or "0". Without it a backup of a log with tiered segments
// references their objects (a version 2 snapshot stream).
const IncludeTieredMD = "tsstore-include-tiered"

// includeTiered reports whether the request asks for tiered bytes.
func includeTiered(ctx context.Context) bool {
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get(IncludeTieredMD) {
		if v != "" && v != "0" {
			return true
		}
	}
	return false
}

// Snapshot forces a Raft snapshot on this node. When the FSM has applied
// nothing since the last one (raft's ErrNothingNewToSnapshot), it answers
// with the newest existing snapshot instead.
func (s *service) Snapshot(ctx context.Context, _ *pb.SnapshotRequest) (*pb.SnapshotResponse, error) {
	meta, rc, err := s.n.openSnapshot(ctx)
	if err != nil {
		return nil, snapshotStatus(err)
	}
	rc.Close()
	return &pb.SnapshotResponse{Id: meta.ID, Index: meta.Index, Term: meta.Term, SizeBytes: uint64(meta.Size)}, nil
}

// Backup streams a consistent cut of the store at one Raft index: it takes
// a snapshot (or, with nothing new, uses the newest), sends its info and
// then the snapshot stream in chunks. The snapshot's files are opened
// before the first message, so a concurrent snapshot that reaps it does
// not disturb the stream. gRPC flow control holds the sender back for a
// slow client; a client that goes away cancels the context, which ends
// the stream and closes the files.
func (s *service) Backup(_ *pb.BackupRequest, stream pb.Cluster_BackupServer) error {
	n := s.n
	ctx := stream.Context()
	n.backupsActive.Add(1)
	defer n.backupsActive.Add(-1)
	started := time.Now()
	if err := n.catchUpForBackup(ctx); err != nil {
		return err
	}
	meta, rc, err := n.openSnapshot(ctx)
	if err != nil {
		return snapshotStatus(err)
	}
	defer rc.Close()
	si, r, err := fsm.ReadSnapshotInfo(rc)
	if err != nil {
		return status.Errorf(codes.DataLoss, "snapshot %s: %v", meta.ID, err)
	}
	size, inline := meta.Size, len(si.Tiered) > 0 && includeTiered(ctx)
	if inline {
		// The tiered segments' bytes, read from their objects, replace
		// their local files: a version 1 stream, every batch checked.
		if n.cfg.Segment.Remote == nil {
			return status.Errorf(codes.FailedPrecondition, "snapshot %s references %d tiered objects and node %s has no tier target", meta.ID, len(si.Tiered), n.cfg.NodeID)
		}
		var inl io.Reader
		if size, inl, err = fsm.InlineTiered(r, n.cfg.Segment.Remote); err != nil {
			return status.Errorf(codes.DataLoss, "snapshot %s: %v", meta.ID, err)
		}
		r = fsm.VerifySnapshotStream(inl)
	}
	// Every batch is checked as it is sent (the snapshot store Raft and
	// this call open through verifies the stream, repair_snapshots.go): a
	// backup of a damaged segment fails naming it, it never completes
	// with bytes restore would refuse, and the segment is repaired.
	info := &pb.BackupInfo{
		Cluster: n.cfg.ClusterName, NodeId: n.cfg.NodeID,
		RaftIndex: meta.Index, RaftTerm: meta.Term, NextOffset: si.NextOffset,
		SizeBytes: uint64(size), CreatedUnixNano: started.UnixNano(),
	}
	if err := stream.Send(&pb.BackupChunk{Info: info}); err != nil {
		return err
	}
	n.logger.Info("backup started", "snapshot", meta.ID, "raft_index", meta.Index, "next_offset", si.NextOffset, "bytes", size, "tiered_referenced", len(si.Tiered), "include_tiered", inline)
	var sent int64
	for {
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-n.draining:
			return status.Error(codes.Unavailable, "node is shutting down; retry the backup on another node")
		default:
		}
		// A fresh buffer per message: gRPC may hold a sent message (stats
		// handlers), so it is never reused.
		buf := make([]byte, backupChunkBytes)
		k, err := io.ReadFull(r, buf)
		if k > 0 {
			if err := stream.Send(&pb.BackupChunk{Data: buf[:k]}); err != nil {
				return err
			}
			sent += int64(k)
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			break
		}
		var ce *segment.CorruptionError
		switch {
		case errors.As(err, &ce) || errors.Is(err, fsm.ErrBadSnapshot) || errors.Is(err, segment.ErrRemoteLost):
			n.logger.Error("backup stopped: the snapshot's data is damaged", "snapshot", meta.ID, "error", err)
			return withReason(codes.DataLoss, pb.ErrorReason_ERROR_REASON_CORRUPTION,
				fmt.Sprintf("backup of snapshot %s on node %s: %v; take the backup from another node", meta.ID, n.cfg.NodeID, err), nil)
		case err != nil:
			return status.Errorf(codes.Internal, "reading snapshot %s: %v", meta.ID, err)
		}
	}
	if sent != size {
		return status.Errorf(codes.DataLoss, "snapshot %s: streamed %d of %d bytes", meta.ID, sent, size)
	}
	n.logger.Info("backup sent", "snapshot", meta.ID, "bytes", sent, "duration", time.Since(started))
	return nil
}

// errNoSnapshot: nothing applied since start and no snapshot on disk.
var errNoSnapshot = errors.New("no snapshot: this node has applied nothing and holds no snapshot")

// catchUpForBackup waits until this node has applied everything the
// cluster had committed when the backup started (the leader's read
// index), so the cut holds every append acknowledged before it. A node
// that cannot learn that index, or is too far behind, refuses: the client
// takes the backup elsewhere or later.
func (n *Node) catchUpForBackup(ctx context.Context) error {
	wctx, cancel := context.WithTimeout(ctx, behindWait)
	defer cancel()
	idx, err := n.readIndex(wctx)
	if err == nil {
		err = n.proc.WaitApplied(wctx, idx)
	}
	if err != nil && ctx.Err() == nil {
		return status.Errorf(codes.Unavailable, "node %s cannot take a backup that holds every acknowledged append: %v (applied %d); retry, or take it from another node",
			n.cfg.NodeID, err, n.proc.AppliedIndex())
	}
	if err != nil {
		return status.FromContextError(ctx.Err()).Err()
	}
	return nil
}

// openSnapshot takes a snapshot and opens it, or opens the newest one when
// there is nothing new to snapshot (the newest is then at the FSM's
// applied index). Any other reason raft cannot snapshot now is an error:
// an older snapshot would be a cut without the latest appends. If the new
// snapshot is reaped before it could be opened (two more snapshots
// completed in between), it tries again.
func (n *Node) openSnapshot(ctx context.Context) (*raft.SnapshotMeta, io.ReadCloser, error) {
	for attempt := 1; ; attempt++ {
		f := n.raft.Snapshot()
		err := n.await(ctx, f)
		var meta *raft.SnapshotMeta
		var rc io.ReadCloser
		switch {
		case err == nil:
			meta, rc, err = f.Open()
		case errors.Is(err, raft.ErrNothingNewToSnapshot):
			meta, rc, err = n.openLatestSnapshot()
		}
		if err == nil {
			return meta, rc, nil
		}
		if attempt == 3 || !errors.Is(err, fs.ErrNotExist) {
			return nil, nil, err
		}
		n.logger.Warn("snapshot reaped before it was opened; taking another", "error", err)
	}
}

func (n *Node) openLatestSnapshot() (*raft.SnapshotMeta, io.ReadCloser, error) {
	metas, err := n.snaps.List()
	if err != nil {
		return nil, nil, err
	}
	if len(metas) == 0 {
		return nil, nil, errNoSnapshot
	}
	return verifiedSnapshots{n.snaps, n}.Open(metas[0].ID)
}

func snapshotStatus(err error) error {
	if errors.Is(err, errNoSnapshot) {
		return status.Error(codes.FailedPrecondition, err.Error())
	}
	if errors.Is(err, raft.ErrRaftShutdown) {
		return status.Error(codes.Unavailable, err.Error())
	}
	if _, ok := status.FromError(err); !ok && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
		return status.Error(codes.Unavailable, fmt.Sprintf("snapshot: %v", err))
	}
	return toStatus(err)
}
