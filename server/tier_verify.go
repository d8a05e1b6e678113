package server

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"strings"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tsstore/tsstore/fsm"
	pb "github.com/tsstore/tsstore/proto/tsstorev1"
	"github.com/tsstore/tsstore/segment"
	"github.com/tsstore/tsstore/tiering"
)

// VerifyTiered reads every tiered segment's object whole, on the leader,
// and reports its size and CRC-32C next to the manifest's: the check of
// the bytes in the store, not of the checksum the store keeps for them.
// It also fetches and decodes each object's index bundle: a corrupt or
// unreadable one is an Error, a missing one a Note (objects tiered
// before bundles were uploaded have none; nothing is lost without it).
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
		var problems []string
		if err != nil {
			problems = append(problems, err.Error())
		}
		note, err := checkIndexBundle(ctx, target, e)
		if ctx.Err() != nil {
			return nil, toStatus(ctx.Err())
		}
		if err != nil {
			problems = append(problems, err.Error())
		}
		c.Error, c.Note = strings.Join(problems, "; "), note
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

// checkIndexBundle fetches and decodes the index bundle beside e's
// object and checks that it is the segment's. A missing bundle is a
// note, not an error: the segment's index files can still be rebuilt
// from the object.
func checkIndexBundle(ctx context.Context, target tiering.Target, e fsm.ManifestEntry) (note string, err error) {
	b, err := fetchIndexBundle(ctx, target, e.Key)
	if errors.Is(err, segment.ErrRemoteLost) {
		return fmt.Sprintf("no index bundle %s (tiered before index bundles were uploaded, or deleted): a node that loses this segment's index files rebuilds them from the whole object",
			indexBundleKey(e.Key)), nil
	}
	if err != nil {
		return "", err
	}
	if _, err := segment.DecodeIndexBundle(b, indexBundleKey(e.Key), e.BaseOffset, e.NextOffset, e.Size); err != nil {
		return "", err
	}
	return "", nil
}
