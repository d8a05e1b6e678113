package jepsen

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/tsstore/tsstore/internal/proccluster"
	pb "github.com/tsstore/tsstore/proto/tsstorev1"
)

// finalTiering is the final phase of a tiering run, after every fault is
// healed and the clients stopped: a marker append, the replicas
// converged, the upload backlog drained (every node's backlog 0 and every
// tiered segment evicted, up to 30 s), `verify --tiered`; then every node
// is restarted, so no block cache holds a tiered segment and each read of
// one is a GET, and each node's log is read segment by segment
// (readTiered). stopPoller stops the metrics poller after the drain.
func finalTiering(ctx context.Context, c *cluster, rec *recorder, runID string, stopPoller func()) ([]Replica, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	wctx, wcancel := context.WithTimeout(ctx, 60*time.Second)
	_, err := c.pc.WaitLeader(wctx)
	wcancel()
	if err != nil {
		stopPoller()
		return nil, fmt.Errorf("final phase: no leader after healing: %w", err)
	}
	marker, err := appendMarker(ctx, c, rec, runID)
	if err != nil {
		stopPoller()
		return nil, err
	}
	end, err := converge(ctx, c, marker+1)
	if err != nil {
		stopPoller()
		return nil, err
	}
	drainErr := drainTier(ctx, c, rec)
	stopPoller()
	rec.tiering(func(t *TieringRun) { t.Drained, t.DrainErr = drainErr == nil, errText(drainErr, "") })
	checks, verr := verifyTiered(ctx, c)
	rec.tiering(func(t *TieringRun) { t.Verify, t.VerifyErr = checks, errText(verr, "") })

	// All three at once (SIGTERM, then start): the phase stays short.
	errs := make(chan error, len(c.nodes))
	for _, n := range c.nodes {
		go func() {
			if err := n.Stop(10 * time.Second); err != nil {
				errs <- fmt.Errorf("final phase: stopping %s: %w", n.ID, err)
				return
			}
			errs <- n.Start()
		}()
	}
	for range c.nodes {
		if err := <-errs; err != nil {
			return nil, err
		}
	}
	wctx, wcancel = context.WithTimeout(ctx, 60*time.Second)
	_, err = c.pc.WaitLeader(wctx)
	wcancel()
	if err != nil {
		return nil, fmt.Errorf("final phase: no leader after restarting every node: %w", err)
	}
	if _, err := converge(ctx, c, end); err != nil {
		return nil, err
	}
	var reps []Replica
	for _, n := range c.nodes {
		reps = append(reps, readTiered(ctx, n, end))
	}
	return reps, nil
}

// drainTier waits up to 30 s until every node reports no backlog and
// has evicted every tiered segment whose object was not deleted.
func drainTier(ctx context.Context, c *cluster, rec *recorder) error {
	deleted := map[string]bool{}
	rec.tiering(func(t *TieringRun) {
		for _, d := range t.Damaged {
			deleted[d.Key] = d.Kind == "deleted"
		}
	})
	var why string
	for deadline := time.Now().Add(30 * time.Second); ; {
		why = ""
		for _, n := range c.nodes {
			segs, backlog, err := tierManifest(ctx, n)
			switch {
			case err != nil:
				why = fmt.Sprintf("%s: %v", n.ID, err)
			case backlog > 0:
				why = fmt.Sprintf("%s: backlog %d segments", n.ID, backlog)
			default:
				for _, s := range segs {
					if s.State == "tiered" && s.Local && !deleted[s.Key] {
						why = fmt.Sprintf("%s: tiered segment %d not evicted", n.ID, s.Base)
						break
					}
				}
			}
			if why != "" {
				break
			}
		}
		if why == "" {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("not drained after 30 s: %s", why)
		}
		sleepCtx(ctx, 300*time.Millisecond)
	}
}

// verifyTiered runs `tsstore verify --tiered` (the leader reads every
// tiered object and checks it against the manifest).
func verifyTiered(ctx context.Context, c *cluster) ([]TierObjectCheck, error) {
	var out []TierObjectCheck
	var last error
	for i := range 6 {
		out = nil
		last = withConn(c.nodes[i%len(c.nodes)], func(conn *grpc.ClientConn) error {
			ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			defer cancel()
			resp, err := pb.NewRetentionClient(conn).VerifyTiered(ctx, &pb.VerifyTieredRequest{})
			if err != nil {
				return err
			}
			for _, o := range resp.Objects {
				ok := o.Error == "" && o.ReadBytes == o.SizeBytes && o.Digest == o.ManifestDigest
				e := o.Error
				if e == "" && !ok {
					e = fmt.Sprintf("read %d of %d bytes, crc %08x, manifest %08x", o.ReadBytes, o.SizeBytes, o.Digest, o.ManifestDigest)
				}
				out = append(out, TierObjectCheck{Key: o.ObjectKey, Base: o.BaseOffset, Next: o.NextOffset, OK: ok, Err: e})
			}
			return nil
		})
		if last == nil {
			return out, nil
		}
		sleepCtx(ctx, 500*time.Millisecond)
	}
	return nil, last
}

// readTiered reads one node's log [0, end) one manifest segment at a
// time, then the rest. A range that fails is recorded with its error and
// stands in the replica as lostValue; one that comes back short without
// an error as "" (rule 1 finds those missing). The hash covers the bytes
// of the ranges read and the name of those lost, so replicas that lost
// the same ranges agree.
func readTiered(ctx context.Context, n *proccluster.Node, end uint64) Replica {
	rep := Replica{Node: n.ID}
	rt := &ReplicaTier{}
	rep.Tier = rt
	segs, backlog, err := tierManifest(ctx, n)
	if err != nil {
		rep.Err = "ListRetention: " + err.Error()
		return rep
	}
	rt.Manifest, rt.Backlog = segs, backlog
	if err := withConn(n, func(conn *grpc.ClientConn) error {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		dr, err := pb.NewRetentionClient(conn).SegmentDigests(ctx, &pb.SegmentDigestsRequest{})
		if err != nil {
			return err
		}
		for _, s := range dr.Segments {
			rt.Digests = append(rt.Digests, TierDigest{Base: s.BaseOffset, Digest: s.Digest, ManifestDigest: s.ManifestDigest, Err: s.Error})
		}
		return nil
	}); err != nil {
		rt.Err = "SegmentDigests: " + err.Error()
	}
	type rng struct {
		from, to uint64
		key      string
	}
	var ranges []rng
	var at uint64
	sort.Slice(segs, func(i, j int) bool { return segs[i].Base < segs[j].Base })
	for _, s := range segs {
		if s.State == "dropped" || s.Next <= at {
			continue
		}
		if s.Base > at {
			ranges = append(ranges, rng{at, s.Base, ""})
		}
		key := ""
		if s.State == "tiered" {
			key = s.Key
		}
		ranges = append(ranges, rng{s.Base, min(s.Next, end), key})
		at = s.Next
	}
	if at < end {
		ranges = append(ranges, rng{at, end, ""})
	}
	h := sha256.New()
	err = withConn(n, func(conn *grpc.ClientConn) error {
		api := pb.NewEventStoreClient(conn)
		for _, r := range ranges {
			if r.from >= r.to {
				continue
			}
			rr := RangeRead{From: r.from, To: r.to, Key: r.key}
			// rep holds exactly r.from values here: every range before
			// was padded to its end.
			var buf []byte
			gaps := len(rep.Gaps)
			rerr := readRange(ctx, api, r.from, r.to, func(b []byte) error {
				buf = append(buf, b...)
				return decodeInto(&rep, b, r.to)
			})
			rr.Got = len(rep.Values) - int(r.from)
			if rerr != nil {
				rr.Err, rr.Code = rerr.Error(), status.Code(rerr).String()
				rep.Values, rep.Streams, rep.Gaps = rep.Values[:r.from], rep.Streams[:r.from], rep.Gaps[:gaps]
				for range r.to - r.from {
					rep.Values = append(rep.Values, lostValue)
					rep.Streams = append(rep.Streams, "")
				}
				fmt.Fprintf(h, "lost [%d, %d) %s\n", r.from, r.to, r.key)
			} else {
				h.Write(buf)
				rep.Bytes += len(buf)
				for uint64(len(rep.Values)) < r.to { // short: missing offsets
					rep.Values = append(rep.Values, "")
					rep.Streams = append(rep.Streams, "")
				}
			}
			rt.Ranges = append(rt.Ranges, rr)
		}
		return nil
	})
	if err != nil {
		rep.Err = err.Error()
	}
	rep.Length = len(rep.Values)
	rep.Hash = fmt.Sprintf("%x", h.Sum(nil))
	return rep
}

// readRange reads [from, to) with one local Read, handing each response's
// batches to f.
func readRange(ctx context.Context, api pb.EventStoreClient, from, to uint64, f func([]byte) error) error {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	stream, err := api.Read(ctx, &pb.ReadRequest{FromOffset: from, ToOffset: to})
	if err != nil {
		return err
	}
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := f(resp.Batches); err != nil {
			return err
		}
	}
}

// namesKey reports whether an error message names the object key.
func namesKey(msg, key string) bool { return key != "" && strings.Contains(msg, key) }
