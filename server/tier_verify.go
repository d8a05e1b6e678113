package server

import (
	"context"
	"fmt"
	"hash/crc32"
	"io"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tsstore/tsstore/fsm"
	pb "github.com/tsstore/tsstore/proto/tsstorev1"
	"github.com/tsstore/tsstore/tiering"
)

// VerifyTiered reads every tiered segment's object whole, on the leader,
// and reports its size and CRC-32C next to the manifest's: the check of
// the bytes in the store, not of the checksum the store keeps for them.
func (s *retentionService) VerifyTiered(ctx context.Context, req *pb.VerifyTieredRequest) (*pb.VerifyTieredResponse, error) {
	if s.n.raft.State() != raft.Leader {
		fctx, c, err := s.n.forwardRetention(ctx)
		if err != nil {
			return nil, err
		}
		return c.VerifyTiered(fctx, req)
	}
	target := s.n.cfg.Tier.Target
	if target == nil {
		return nil, status.Error(codes.FailedPrecondition, "tiering is not configured on the leader (tier-dir or tier-s3-bucket)")
	}
	out := &pb.VerifyTieredResponse{NodeId: s.n.cfg.NodeID, Target: target.String()}
	for _, e := range s.n.proc.Retention().Segments {
		if e.State != fsm.SegmentTiered {
			continue
		}
		c := &pb.TieredObjectCheck{BaseOffset: e.BaseOffset, NextOffset: e.NextOffset, ObjectKey: e.Key,
			SizeBytes: uint64(e.Size), ManifestDigest: e.Digest}
		n, sum, err := objectChecksum(ctx, target, e.Key, e.Size)
		if ctx.Err() != nil {
			return nil, toStatus(ctx.Err())
		}
		c.ReadBytes, c.Digest = uint64(n), sum
		if err != nil {
			c.Error = err.Error()
		}
		out.Objects = append(out.Objects, c)
	}
	return out, nil
}

// objectChecksum reads the object (one byte past size, to see an object
// longer than the segment) and returns what it read and its CRC-32C.
func objectChecksum(ctx context.Context, target tiering.Target, key string, size int64) (int64, uint32, error) {
	rc, err := target.GetRange(ctx, key, 0, size+1)
	if err != nil {
		return 0, 0, err
	}
	defer rc.Close()
	h := crc32.New(crc32.MakeTable(crc32.Castagnoli))
	n, err := io.Copy(h, rc)
	if err != nil {
		return n, h.Sum32(), fmt.Errorf("read %s: %w", key, err)
	}
	return n, h.Sum32(), nil
}
