package server

import (
	"context"
	"errors"
	"fmt"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	"github.com/tsstore/tsstore/fsm"
	pb "github.com/tsstore/tsstore/proto/tsstorev1"
	"github.com/tsstore/tsstore/record"
	"github.com/tsstore/tsstore/segment"
)

// runsService serves the Runs API (proto/tsstore/v1/runs.proto): fencing
// through Raft, and the run and run-snapshot index the FSM keeps
// (fsm/runs.go).
type runsService struct {
	pb.UnimplementedRunsServer
	n *Node
}

// startRunAttempts bounds the retries of a fence that lost a race with
// another StartRun of the same run.
const startRunAttempts = 5

func (s *runsService) StartRun(ctx context.Context, req *pb.StartRunRequest) (*pb.StartRunResponse, error) {
	if err := fsm.ValidateStreamName(req.Run); err != nil {
		return nil, toStatus(err)
	}
	if err := printable("reason", req.Reason); err != nil {
		return nil, err
	}
	if len(req.Reason) > 1024 || len(req.Token) > 128 {
		return nil, invalidArg("reason of %d bytes or token of %d exceeds 1024 or 128", len(req.Reason), len(req.Token))
	}
	if err := printable("token", req.Token); err != nil {
		return nil, err
	}
	n := s.n
	if n.raft.State() != raft.Leader {
		if isForwarded(ctx) {
			return nil, toStatus(fmt.Errorf("%w: forwarded StartRun reached non-leader %s", errNoLeader, n.cfg.NodeID))
		}
		conn, err := n.leaderConn()
		if err != nil {
			return nil, toStatus(err)
		}
		ctx = metadata.AppendToOutgoingContext(ctx, forwardedKey, n.cfg.NodeID)
		return pb.NewRunsClient(conn).StartRun(ctx, req)
	}
	if p := n.appendDiskProblem(); p != "" {
		return nil, withReason(codes.ResourceExhausted, pb.ErrorReason_ERROR_REASON_DISK_FULL,
			fmt.Sprintf("node %s refuses appends: %s", n.cfg.NodeID, p), nil)
	}
	for attempt := 0; ; attempt++ {
		// The leader's applied state may lag the fences already proposed;
		// the FSM decides (a fence must name exactly current+1) and a lost
		// race is retried with the newer generation.
		cur := uint64(0)
		if r, ok := n.proc.Run(req.Run); ok {
			cur = r.Generation
		}
		if r, ok := n.proc.Run(req.Run); ok && req.Token != "" && r.FenceToken == req.Token {
			// A retry of a StartRun that committed: its answer again.
			return &pb.StartRunResponse{Generation: r.Generation, Offset: r.FenceOffset}, nil
		}
		if req.ExpectGeneration != 0 && req.ExpectGeneration != cur {
			return nil, toStatus(&fsm.FencedError{Run: req.Run, Have: req.ExpectGeneration, Current: cur, Fencing: true})
		}
		gen := cur + 1
		op := fsm.AppendOp{Events: []fsm.Event{{Stream: req.Run, Type: fsm.FenceType,
			Payload: fsm.EncodeFence(fsm.Fence{Generation: gen, Reason: req.Reason, Token: req.Token})}}, Generation: gen}
		op.EventSum, op.HasEventSum = fsm.SumEvents(op.Events), true
		res, err := n.prop.propose(ctx, op, len(req.Run)+len(req.Reason)+32)
		if err == nil {
			err = res.Err
		}
		var fe *fsm.FencedError
		// A lost race is tried again with the newer generation; a retry of
		// a fence that committed meanwhile (same token) is answered from
		// the run's state at the top of the loop.
		if errors.As(err, &fe) && fe.Fencing && (fe.Retry || req.ExpectGeneration == 0) && attempt+1 < startRunAttempts {
			continue
		}
		if err != nil {
			return nil, toStatus(err)
		}
		n.logger.Info("run started", "run", req.Run, "generation", gen, "offset", res.FirstOffset, "reason", req.Reason)
		return &pb.StartRunResponse{Generation: gen, Offset: res.FirstOffset}, nil
	}
}

// readable applies a run call's consistency rule, as for reads.
func (s *runsService) readable(ctx context.Context, c pb.Consistency) error {
	return s.n.waitReadable(ctx, &pb.ReadRequest{Consistency: c})
}

func (s *runsService) GetRun(ctx context.Context, req *pb.GetRunRequest) (*pb.RunInfo, error) {
	if err := s.readable(ctx, req.Consistency); err != nil {
		return nil, toStatus(err)
	}
	r, ok := s.n.proc.Run(req.Run)
	if !ok {
		return nil, runNotFound(req.Run)
	}
	info := runInfo(r)
	for _, ref := range r.Snapshots {
		info.Snapshots = append(info.Snapshots, snapshotRef(ref))
	}
	return info, nil
}

func (s *runsService) ListRuns(ctx context.Context, req *pb.ListRunsRequest) (*pb.ListRunsResponse, error) {
	if err := s.readable(ctx, req.Consistency); err != nil {
		return nil, toStatus(err)
	}
	limit := int(req.Limit)
	if limit <= 0 || limit > 1000 {
		limit = 1000
	}
	list, more := s.n.proc.ListRuns(req.Prefix, req.After, limit)
	resp := &pb.ListRunsResponse{}
	for _, r := range list {
		resp.Runs = append(resp.Runs, runInfo(r))
	}
	if more && len(list) > 0 {
		resp.NextAfter = list[len(list)-1].Name
	}
	return resp, nil
}

func (s *runsService) GetRunSnapshot(ctx context.Context, req *pb.GetRunSnapshotRequest) (*pb.GetRunSnapshotResponse, error) {
	if req.FoldVersion > 0xffff {
		return nil, invalidArg("fold version %d out of range", req.FoldVersion)
	}
	key, x := fsm.ByOffset, ^uint64(0)
	switch at := req.At.(type) {
	case *pb.GetRunSnapshotRequest_AtOffset:
		x = at.AtOffset
	case *pb.GetRunSnapshotRequest_AtStep:
		key, x = fsm.ByStep, at.AtStep
	case *pb.GetRunSnapshotRequest_AtTimeUnixNano:
		if at.AtTimeUnixNano < 0 {
			return &pb.GetRunSnapshotResponse{}, nil
		}
		key, x = fsm.ByTime, uint64(at.AtTimeUnixNano)
	}
	if err := s.readable(ctx, req.Consistency); err != nil {
		return nil, toStatus(err)
	}
	n := s.n
	if _, ok := n.proc.Run(req.Run); !ok {
		return nil, runNotFound(req.Run)
	}
	ref, ok := n.proc.RunSnapshotAt(req.Run, key, x, uint16(req.FoldVersion))
	if !ok {
		return &pb.GetRunSnapshotResponse{}, nil
	}
	snap, err := n.readRunSnapshot(ref.Offset)
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.GetRunSnapshotResponse{Found: true, Ref: snapshotRef(ref), Generation: snap.Generation, Hash: snap.Hash, State: snap.State}, nil
}

// readRunSnapshot reads the "$snapshot" event at offset from the log.
func (n *Node) readRunSnapshot(offset uint64) (*fsm.RunSnapshot, error) {
	var payload []byte
	err := n.proc.WithLog(func(l *segment.Log) error {
		buf, _, err := l.ReadBatches(nil, offset, 1)
		if err != nil {
			return err
		}
		if len(buf) == 0 {
			return fmt.Errorf("%w: run snapshot at offset %d is not in the log", record.ErrCorrupt, offset)
		}
		b, _, err := record.Next(buf)
		if err != nil {
			return err
		}
		it := b.Records()
		var r record.Record
		for it.Next(&r) {
			if r.Offset == offset {
				if string(r.Type) != fsm.SnapshotType {
					return fmt.Errorf("%w: offset %d holds a %q event, the run index says %s", record.ErrCorrupt, offset, r.Type, fsm.SnapshotType)
				}
				payload = append([]byte(nil), r.Payload...)
				return nil
			}
		}
		if err := it.Err(); err != nil {
			return err
		}
		return fmt.Errorf("%w: no event at offset %d in the batch read for it", record.ErrCorrupt, offset)
	})
	if err != nil {
		return nil, err
	}
	return fsm.DecodeRunSnapshot(payload)
}

func runNotFound(run string) error {
	return withReason(codes.NotFound, pb.ErrorReason_ERROR_REASON_STREAM_NOT_FOUND,
		fmt.Sprintf("run %q not found: start it with StartRun (tsstore run start)", run), map[string]string{"stream": run})
}

func runInfo(r fsm.RunEntry) *pb.RunInfo {
	return &pb.RunInfo{
		Run: r.Name, Generation: r.Generation, FenceOffset: r.FenceOffset, FenceTimeUnixNano: r.FenceTime,
		Events: r.Stream.Version, LastOffset: r.Stream.LastOffset, LastTimestampUnixNano: r.Stream.LastTimestamp,
		SnapshotsTaken: r.Taken,
	}
}

func snapshotRef(ref fsm.RunSnapshotRef) *pb.RunSnapshotRef {
	return &pb.RunSnapshotRef{Offset: ref.Offset, Covers: ref.Covers, Step: ref.Step, TimeUnixNano: ref.Time,
		Events: ref.Events, Batches: ref.Batches, FoldVersion: uint32(ref.FoldVersion), Seq: ref.Seq}
}
