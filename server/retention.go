package server

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/tsstore/tsstore/compaction"
	"github.com/tsstore/tsstore/fsm"
	pb "github.com/tsstore/tsstore/proto/tsstorev1"
	"github.com/tsstore/tsstore/segment"
)

// retentionService serves the Retention API: policies are committed
// through Raft on the leader; cuts are planned on the leader
// (package compaction) and committed through Raft, so every replica drops
// the same whole sealed segments.
type retentionService struct {
	pb.UnimplementedRetentionServer
	n *Node
}

// forwardRetention returns a context and a Retention client of the
// leader for a call this node cannot serve, or an error.
func (n *Node) forwardRetention(ctx context.Context) (context.Context, pb.RetentionClient, error) {
	if isForwarded(ctx) {
		return nil, nil, toStatus(errNoLeader)
	}
	conn, err := n.leaderConn()
	if err != nil {
		return nil, nil, toStatus(err)
	}
	return metadata.AppendToOutgoingContext(ctx, forwardedKey, n.cfg.NodeID), pb.NewRetentionClient(conn), nil
}

func (s *retentionService) SetRetention(ctx context.Context, req *pb.SetRetentionRequest) (*pb.SetRetentionResponse, error) {
	p := req.GetPolicy()
	if p == nil {
		return nil, invalidArg("policy is required (its prefix at least)")
	}
	if p.MaxAgeSeconds < 0 || p.MaxBytes < 0 || p.MaxAgeSeconds > int64(1<<63-1)/int64(time.Second) {
		return nil, invalidArg("max age and max bytes must be positive (0: no limit)")
	}
	if !req.Remove && p.MaxAgeSeconds == 0 && p.MaxBytes == 0 {
		return nil, invalidArg("a policy needs a max age or a max size (or remove it)")
	}
	if s.n.raft.State() != raft.Leader {
		fctx, c, err := s.n.forwardRetention(ctx)
		if err != nil {
			return nil, err
		}
		return c.SetRetention(fctx, req)
	}
	cmd := &fsm.SetRetentionCommand{Prefix: p.Prefix, MaxAge: p.MaxAgeSeconds * int64(time.Second), MaxBytes: p.MaxBytes, Remove: req.Remove}
	if _, err := s.n.applyCommand(ctx, fsm.CmdSetRetention, cmd); err != nil {
		if errors.Is(err, fsm.ErrInvalidPolicy) {
			return nil, invalidArg("%v", err)
		}
		return nil, toStatus(err)
	}
	return &pb.SetRetentionResponse{PolicyVersion: s.n.proc.Retention().PolicyVersion}, nil
}

func (s *retentionService) ListRetention(ctx context.Context, _ *pb.ListRetentionRequest) (*pb.ListRetentionResponse, error) {
	r := s.n.proc.Retention()
	out := &pb.ListRetentionResponse{NodeId: s.n.cfg.NodeID, PolicyVersion: r.PolicyVersion,
		FirstOffset: s.n.proc.FirstOffset(), NextOffset: s.n.proc.NextOffset()}
	for _, p := range r.Policies {
		out.Policies = append(out.Policies, &pb.RetentionPolicy{Prefix: p.Prefix, MaxAgeSeconds: p.MaxAge / int64(time.Second), MaxBytes: p.MaxBytes})
	}
	local := map[uint64]bool{} // this node holds the .log
	_ = s.n.proc.WithLog(func(l *segment.Log) error {
		for _, si := range l.Segments() {
			local[si.BaseOffset] = !si.Tiered
		}
		return nil
	})
	for _, e := range r.Segments {
		out.Segments = append(out.Segments, &pb.ManifestSegment{BaseOffset: e.BaseOffset, NextOffset: e.NextOffset,
			SizeBytes: uint64(e.Size), Digest: e.Digest, LastTimestamp: e.LastTimestamp, State: e.State.String(), ObjectKey: e.Key,
			LocalCopy: e.State != fsm.SegmentDropped && local[e.BaseOffset]})
	}
	if t := s.n.cfg.Tier.Target; t != nil {
		out.TierTarget = t.String()
		segs, bytes := s.n.tierBacklogNow(time.Now())
		out.TierBacklogSegments, out.TierBacklogBytes = uint64(segs), uint64(bytes)
	}
	return out, nil
}

func (s *retentionService) Compact(ctx context.Context, req *pb.CompactRequest) (*pb.CompactResponse, error) {
	if s.n.raft.State() != raft.Leader {
		fctx, c, err := s.n.forwardRetention(ctx)
		if err != nil {
			return nil, err
		}
		return c.Compact(fctx, req)
	}
	plan, version, err := s.n.planRetention(time.Now())
	if err != nil {
		return nil, toStatus(err)
	}
	out := &pb.CompactResponse{Cut: plan.Cut, Bytes: uint64(plan.Bytes), Kept: plan.Kept, PolicyVersion: version}
	for _, d := range plan.Drops {
		out.Segments = append(out.Segments, &pb.CompactedSegment{BaseOffset: d.Segment.BaseOffset, NextOffset: d.Segment.NextOffset,
			SizeBytes: uint64(d.Segment.Size), Reason: d.Reason})
	}
	rewrites, err := s.n.planRewrites(time.Now())
	if err != nil {
		return nil, toStatus(err)
	}
	segs := map[uint64]fsm.ManifestEntry{}
	for _, e := range s.n.proc.Retention().Segments {
		segs[e.BaseOffset] = e
	}
	for _, r := range rewrites {
		e := segs[r.thin.BaseOffset]
		out.Rewrites = append(out.Rewrites, &pb.SegmentRewrite{BaseOffset: r.thin.BaseOffset, NextOffset: e.NextOffset,
			Stream: r.thin.Stream, Upto: r.thin.Upto, KeptTypes: r.thin.Keep,
			SizeBefore: uint64(e.Size), SizeAfter: uint64(r.cmd.Size), Reason: r.reason})
	}
	if req.DryRun {
		return out, nil
	}
	if plan.Cut != 0 {
		if err := s.n.commitCut(ctx, plan, version); err != nil {
			if errors.Is(err, fsm.ErrStalePlan) {
				return nil, status.Error(codes.Aborted, err.Error())
			}
			return nil, toStatus(err)
		}
		out.Committed = true
	}
	if len(rewrites) > 0 {
		// Planned again: the cut may have dropped some of them.
		done, err := s.n.compactRuns(time.Now())
		out.RewritesCommitted = uint32(done)
		if err != nil {
			return nil, toStatus(err)
		}
	}
	return out, nil
}

func (s *retentionService) SegmentDigests(ctx context.Context, _ *pb.SegmentDigestsRequest) (*pb.SegmentDigestsResponse, error) {
	r := s.n.proc.Retention()
	out := &pb.SegmentDigestsResponse{NodeId: s.n.cfg.NodeID, FirstOffset: s.n.proc.FirstOffset()}
	err := s.n.proc.WithLog(func(l *segment.Log) error {
		evicted := map[uint64]bool{}
		for _, si := range l.Segments() {
			evicted[si.BaseOffset] = si.Tiered
		}
		for _, e := range r.Segments {
			if !e.State.HasLocalCopy() {
				continue
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			d := &pb.SegmentDigest{BaseOffset: e.BaseOffset, NextOffset: e.NextOffset, SizeBytes: uint64(e.Size), ManifestDigest: e.Digest}
			// An evicted segment's bytes are the one object every node
			// reads, checked against the manifest before eviction: its
			// marker's digest, not a read of the whole object per node
			// (`tsstore verify --tiered` reads the objects).
			sum, err := l.Digest(e.BaseOffset, !evicted[e.BaseOffset])
			switch {
			case errors.Is(err, segment.ErrNotSealed):
				continue // dropped since the manifest was copied
			case err != nil:
				d.Error = err.Error()
			default:
				d.Digest = sum
			}
			out.Segments = append(out.Segments, d)
		}
		return nil
	})
	if err != nil {
		return nil, toStatus(err)
	}
	return out, nil
}

func (s *retentionService) DeleteStream(ctx context.Context, req *pb.DeleteStreamRequest) (*pb.DeleteStreamResponse, error) {
	if req.Stream == "" {
		return nil, invalidArg("stream is required")
	}
	if s.n.raft.State() != raft.Leader {
		fctx, c, err := s.n.forwardRetention(ctx)
		if err != nil {
			return nil, err
		}
		return c.DeleteStream(fctx, req)
	}
	_, err := s.n.applyCommand(ctx, fsm.CmdDeleteStream, &fsm.DeleteStreamCommand{Stream: req.Stream})
	switch {
	case errors.Is(err, fsm.ErrStreamNotFound):
		return nil, withReason(codes.NotFound, pb.ErrorReason_ERROR_REASON_STREAM_NOT_FOUND,
			fmt.Sprintf("stream %q has no events", req.Stream), map[string]string{"stream": req.Stream})
	case errors.Is(err, fsm.ErrSystemStream):
		return nil, invalidArg("%v", err)
	case err != nil:
		return nil, toStatus(err)
	}
	d, _ := s.n.proc.StreamDeleted(req.Stream)
	s.n.logger.Info("stream deleted", "stream", req.Stream, "upto", d.Upto, "version", d.Version)
	return &pb.DeleteStreamResponse{UptoOffset: d.Upto, Version: d.Version}, nil
}

// planRetention plans a cut under the current policies on this node's
// log and returns it with the policy version it was made under.
func (n *Node) planRetention(now time.Time) (compaction.Plan, uint64, error) {
	r := n.proc.Retention()
	if len(r.Policies) == 0 {
		return compaction.Plan{Kept: "no retention policy is set"}, r.PolicyVersion, nil
	}
	pols := make([]compaction.Policy, len(r.Policies))
	for i, p := range r.Policies {
		pols[i] = compaction.Policy{Prefix: p.Prefix, MaxAge: time.Duration(p.MaxAge), MaxBytes: p.MaxBytes}
	}
	var segs []compaction.Segment
	err := n.proc.WithLog(func(l *segment.Log) error {
		for _, e := range r.Segments {
			if !e.State.HasLocalCopy() {
				continue
			}
			names, err := l.SegmentStreams(e.BaseOffset)
			if err != nil {
				return fmt.Errorf("retention: streams of segment %d: %w", e.BaseOffset, err)
			}
			segs = append(segs, compaction.Segment{BaseOffset: e.BaseOffset, NextOffset: e.NextOffset, Size: e.Size,
				LastTimestamp: e.LastTimestamp, Streams: names})
		}
		return nil
	})
	if err != nil {
		return compaction.Plan{}, 0, err
	}
	return compaction.MakePlan(pols, segs, now.UnixNano()), r.PolicyVersion, nil
}

// commitCut commits a planned cut through Raft.
func (n *Node) commitCut(ctx context.Context, plan compaction.Plan, version uint64) error {
	_, err := n.applyCommand(ctx, fsm.CmdCompact, &fsm.CompactCommand{Cut: plan.Cut, PolicyVersion: version})
	if err == nil {
		n.metrics.retentionCuts.Inc()
		n.metrics.retentionBytes.Add(float64(plan.Bytes))
		n.logger.Info("retention cut committed", "cut", plan.Cut, "segments", len(plan.Drops), "bytes", plan.Bytes, "policy_version", version)
	}
	return err
}

// runRetention plans and commits a cut every RetentionInterval while this
// node leads. A failed tick is logged and tried again at the next.
func (n *Node) runRetention() {
	if n.cfg.RetentionInterval <= 0 {
		return
	}
	t := time.NewTicker(n.cfg.RetentionInterval)
	defer t.Stop()
	for {
		select {
		case <-n.shutdown:
			return
		case <-t.C:
		}
		if n.raft.State() != raft.Leader {
			continue
		}
		plan, version, err := n.planRetention(time.Now())
		if err == nil && plan.Cut > 0 {
			ctx, cancel := context.WithTimeout(context.Background(), n.cfg.CommandTimeout)
			err = n.commitCut(ctx, plan, version)
			cancel()
		}
		if err == nil {
			_, err = n.compactRuns(time.Now())
		}
		if err != nil && !errors.Is(err, raft.ErrNotLeader) && !errors.Is(err, raft.ErrLeadershipLost) {
			n.logger.Warn("retention tick", "error", err)
		}
	}
}
