package jepsen

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/tsstore/tsstore/client"
	"github.com/tsstore/tsstore/internal/proccluster"
	pb "github.com/tsstore/tsstore/proto/tsstorev1"
	"github.com/tsstore/tsstore/record"
)

// The retention workload (scenario "retention"): before the clients
// start, a retention policy with a small max-bytes is committed on the
// prefix every workload stream has ("jepsen/"), and the nodes run with
// small segments and a short --retention-interval, so the leader cuts the
// log again and again while the nemesis kills and partitions nodes. A
// keeper process appends, from KeeperFrom of the run on, to a stream no
// policy covers ("keep/"): from then on no cut may pass its first event.
// An operator asks for cuts now (Compact) and re-sets the policy with
// another max-bytes while the leader's ticks plan theirs, so plans race
// and some are refused as stale. Before the final phase's marker the policy is removed (no cut after
// it), so every node ends at one first kept offset; each node then reports
// its cut, manifest and the digests of its sealed segments read now
// (Retention.SegmentDigests, as `tsstore verify --cluster` does), and is
// probed with reads below and at its first kept offset. Rule 12
// (retcheck.go) judges it all.

// RetentionSpec is a scenario's retention policy and keeper.
type RetentionSpec struct {
	Prefix   string // the policy's prefix; every workload stream has it
	MaxBytes int64  // the policy's max-bytes
	// Uncovered is the prefix of the keeper's stream, which no policy
	// covers; KeeperFrom is when it starts appending, as a fraction of
	// the run's duration.
	Uncovered  string
	KeeperFrom float64
}

// RetentionRun is what the workload did with retention (History).
type RetentionRun struct {
	Prefix    string `json:"prefix"`
	MaxBytes  int64  `json:"max_bytes"`
	Uncovered string `json:"uncovered_prefix"`
	// Version is the policy version SetRetention returned; SetAt and
	// RemovedAt when it was set and removed (0: not removed).
	Version   uint64        `json:"policy_version"`
	SetAt     time.Duration `json:"set_ns"`
	RemovedAt time.Duration `json:"removed_ns,omitempty"`
	// Ops counts the operator's calls by outcome: compact (no cut),
	// compact_committed, set, and each with _failed_<gRPC code>.
	Ops map[string]int `json:"operator_calls,omitempty"`
}

// covered reports whether the run's policy governs stream.
func (r *RetentionRun) covered(stream string) bool {
	return len(stream) >= len(r.Prefix) && stream[:len(r.Prefix)] == r.Prefix
}

// ReplicaRetention is one node's retention state at the end of a run.
type ReplicaRetention struct {
	// First is the first kept offset ListRetention reported, DigestFirst
	// the one SegmentDigests reported.
	First       uint64 `json:"first_kept"`
	DigestFirst uint64 `json:"digest_first_kept"`
	// Manifest is the node's segment manifest (dropped and local),
	// Digests its sealed segments as read from disk now.
	Manifest []SegmentRecord `json:"manifest"`
	Digests  []SegmentRecord `json:"digests"`
	// Probes are the reads below and at the first kept offset.
	Probes []Probe `json:"probes,omitempty"`
	// Files is how many segment .log files the node's fsm/log directory
	// held at the end; Leftover the base offsets of those below First
	// still there after waiting up to 10 s (a snapshot being written
	// may hold them that long).
	Files    int      `json:"segment_files"`
	Leftover []uint64 `json:"leftover_segments,omitempty"`
	Err      string   `json:"error,omitempty"`
}

// SegmentRecord is one segment as a node reported it.
type SegmentRecord struct {
	Base, Next, Size uint64
	Digest           uint32 // the manifest's, or the one read now
	ManifestDigest   uint32 `json:",omitempty"` // with Digests: the one recorded when sealed
	State            string `json:",omitempty"` // with Manifest: local or dropped
	Err              string `json:",omitempty"`
}

// Probe is one final-phase read of a node from offset From.
type Probe struct {
	From uint64 `json:"from"`
	// Compacted and FirstKept: refused with OFFSET_COMPACTED naming
	// FirstKept. Otherwise First is the offset of the first record
	// delivered (Got false: none) and Err any other error.
	Compacted bool   `json:"compacted,omitempty"`
	FirstKept uint64 `json:"first_kept,omitempty"`
	Got       bool   `json:"got,omitempty"`
	First     uint64 `json:"first,omitempty"`
	Err       string `json:"error,omitempty"`
}

// compactedValue stands for an offset below a replica's first kept
// offset (isSystemValue: rules 1-9 skip it; rule 12 judges those offsets).
const compactedValue = "\x00compacted"

// setRetention sets (or, remove, removes) the policy through any node,
// retrying for up to a minute, and returns the policy version.
func setRetention(ctx context.Context, c *cluster, prefix string, maxBytes int64, remove bool) (uint64, error) {
	deadline := time.Now().Add(60 * time.Second)
	for i := 0; ; i++ {
		var version uint64
		err := withConn(c.nodes[i%len(c.nodes)], func(conn *grpc.ClientConn) error {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			resp, err := pb.NewRetentionClient(conn).SetRetention(cctx, &pb.SetRetentionRequest{
				Policy: &pb.RetentionPolicy{Prefix: prefix, MaxBytes: maxBytes}, Remove: remove})
			if err == nil {
				version = resp.PolicyVersion
			}
			return err
		})
		if err == nil {
			return version, nil
		}
		last := err
		if time.Now().After(deadline) || ctx.Err() != nil {
			return 0, fmt.Errorf("retention policy (remove %v) not committed within 60s: %w", remove, last)
		}
		sleepCtx(ctx, 300*time.Millisecond)
	}
}

func withConn(n *proccluster.Node, f func(*grpc.ClientConn) error) error {
	conn, err := grpc.NewClient(n.APIAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
	if err != nil {
		return err
	}
	defer conn.Close()
	return f(conn)
}

// keeper appends to a stream no policy covers, from KeeperFrom of the
// run until stop, one event every 200 ms through an idempotent producer.
func (w *workload) keeper(ctx, stop context.Context) {
	spec := w.retention
	sleepCtx(stop, time.Duration(spec.KeeperFrom*float64(w.duration)))
	if stop.Err() != nil {
		return
	}
	cl, err := client.New(w.clientConfig())
	if err != nil {
		return
	}
	defer cl.Close()
	const proc = "keep0"
	stream := spec.Uncovered + proc
	prod := cl.NewProducer(proc + "-" + w.runID)
	for n := 0; stop.Err() == nil; n++ {
		v := fmt.Sprintf("%s-%d", proc, n)
		op := AppendOp{Process: proc, Idempotent: true, Values: []string{v}, Invoke: w.rec.now(), Stream: stream}
		w.producerAppend(ctx, prod, &op, []client.Event{{Stream: stream, Type: "Appended", Payload: []byte(v)}})
		if op.Outcome == OK {
			w.noteAck(op.Last())
		}
		sleepCtx(stop, 200*time.Millisecond)
	}
}

// offsetCompacted reports whether err is a typed OFFSET_COMPACTED refusal,
// and the first kept offset it names: the SDK's *OffsetCompactedError, or
// a raw status with the reason and its first_offset metadata.
func offsetCompacted(err error) (uint64, bool) {
	var oc *client.OffsetCompactedError
	if errors.As(err, &oc) {
		return oc.FirstOffset, true
	}
	st, ok := status.FromError(err)
	if !ok {
		return 0, false
	}
	for _, d := range st.Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok && ei.Reason == pb.ErrorReason_ERROR_REASON_OFFSET_COMPACTED.String() {
			first, perr := strconv.ParseUint(ei.Metadata["first_offset"], 10, 64)
			return first, perr == nil
		}
	}
	return 0, false
}

// nodeRetention asks one node for its retention state, its sealed
// segments' digests, and probes reads below and at its first kept offset.
func nodeRetention(ctx context.Context, n *proccluster.Node) *ReplicaRetention {
	rr := &ReplicaRetention{}
	err := withConn(n, func(conn *grpc.ClientConn) error {
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		rc := pb.NewRetentionClient(conn)
		lr, err := rc.ListRetention(ctx, &pb.ListRetentionRequest{})
		if err != nil {
			return fmt.Errorf("ListRetention: %w", err)
		}
		rr.First = lr.FirstOffset
		for _, s := range lr.Segments {
			rr.Manifest = append(rr.Manifest, SegmentRecord{Base: s.BaseOffset, Next: s.NextOffset, Size: s.SizeBytes, Digest: s.Digest, State: s.State})
		}
		dr, err := rc.SegmentDigests(ctx, &pb.SegmentDigestsRequest{})
		if err != nil {
			return fmt.Errorf("SegmentDigests: %w", err)
		}
		rr.DigestFirst = dr.FirstOffset
		for _, s := range dr.Segments {
			rr.Digests = append(rr.Digests, SegmentRecord{Base: s.BaseOffset, Next: s.NextOffset, Size: s.SizeBytes,
				Digest: s.Digest, ManifestDigest: s.ManifestDigest, Err: s.Error})
		}
		for deadline := time.Now().Add(10 * time.Second); ; {
			var err error
			rr.Files, rr.Leftover, err = segmentFiles(filepath.Join(n.DataDir, "fsm", "log"), rr.First)
			if err != nil {
				return err
			}
			if len(rr.Leftover) == 0 || time.Now().After(deadline) {
				break
			}
			sleepCtx(ctx, 500*time.Millisecond)
		}
		froms := []uint64{rr.First}
		if rr.First > 0 {
			froms = append([]uint64{0, rr.First / 2, rr.First - 1}, froms...)
		}
		api := pb.NewEventStoreClient(conn)
		for _, from := range froms {
			rr.Probes = append(rr.Probes, probe(ctx, api, from))
		}
		return nil
	})
	if err != nil {
		rr.Err = err.Error()
	}
	return rr
}

// segmentFiles counts the segment .log files in dir and returns the base
// offsets of those below first.
func segmentFiles(dir string, first uint64) (int, []uint64, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, nil, err
	}
	n := 0
	var below []uint64
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".log")
		if !ok {
			continue
		}
		base, err := strconv.ParseUint(name, 10, 64)
		if err != nil {
			continue
		}
		n++
		if base < first {
			below = append(below, base)
		}
	}
	return n, below, nil
}

// probe reads one message from offset from with a local read.
func probe(ctx context.Context, api pb.EventStoreClient, from uint64) Probe {
	p := Probe{From: from}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	stream, err := api.Read(ctx, &pb.ReadRequest{FromOffset: from, ToOffset: from + 1})
	if err == nil {
		var resp *pb.ReadResponse
		if resp, err = stream.Recv(); err == nil {
			if first, ok := firstRecord(resp.Batches, from); ok {
				p.Got, p.First = true, first
			}
			return p
		}
	}
	if first, ok := offsetCompacted(err); ok {
		p.Compacted, p.FirstKept = true, first
		return p
	}
	p.Err = err.Error()
	return p
}

// firstRecord returns the offset of the first record at or above from in
// buf (whole batches; the first may start below from).
func firstRecord(buf []byte, from uint64) (uint64, bool) {
	for len(buf) > 0 {
		b, rest, err := record.Next(buf)
		if err != nil {
			return 0, false
		}
		buf = rest
		it := b.Records()
		var r record.Record
		for it.Next(&r) {
			if r.Offset >= from {
				return r.Offset, true
			}
		}
	}
	return 0, false
}

// CutObs is a first kept offset a node reported, recorded when it changed
// (the cut watcher polls every node's ListRetention every 250 ms).
type CutObs struct {
	At    time.Duration `json:"at_ns"`
	Node  string        `json:"node"`
	First uint64        `json:"first_kept"`
}

// cutWatcher records every node's first kept offset as it changes, so
// rule 12 can say how many cuts were made while faults were active and
// check that no node's first kept offset goes back.
func (w *workload) cutWatcher(stop context.Context) {
	last := map[string]uint64{}
	for stop.Err() == nil {
		for _, n := range w.c.nodes {
			if !n.Running() {
				continue
			}
			_ = withConn(n, func(conn *grpc.ClientConn) error {
				ctx, cancel := context.WithTimeout(stop, time.Second)
				defer cancel()
				lr, err := pb.NewRetentionClient(conn).ListRetention(ctx, &pb.ListRetentionRequest{})
				if err != nil {
					return err
				}
				if prev, ok := last[n.ID]; !ok || prev != lr.FirstOffset {
					last[n.ID] = lr.FirstOffset
					w.rec.cut(CutObs{At: w.rec.now(), Node: n.ID, First: lr.FirstOffset})
				}
				return nil
			})
		}
		sleepCtx(stop, 250*time.Millisecond)
	}
}

// operator plays the operator on top of the leader's retention ticks:
// every 0.5-1.5 s it either asks for a cut now (Retention.Compact, which
// races the tick's own plans) or sets the policy again with another
// max-bytes (MaxBytes or three quarters of it), so plans made under the
// old policy version are refused at apply (fsm.ErrStalePlan). The
// outcomes are counted in the history's RetentionRun.
func (w *workload) operator(ctx, stop context.Context) {
	spec := w.retention
	rng := rand.New(rand.NewPCG(w.seed, 11))
	for i := 0; stop.Err() == nil; i++ {
		sleepCtx(stop, 500*time.Millisecond+time.Duration(rng.Int64N(int64(time.Second))))
		if stop.Err() != nil {
			return
		}
		n := w.c.nodes[rng.IntN(len(w.c.nodes))]
		var kind string
		err := withConn(n, func(conn *grpc.ClientConn) error {
			cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			defer cancel()
			rc := pb.NewRetentionClient(conn)
			if rng.IntN(2) == 0 {
				kind = "compact"
				resp, err := rc.Compact(cctx, &pb.CompactRequest{})
				if err == nil && resp.Committed {
					kind = "compact_committed"
				}
				return err
			}
			kind = "set"
			maxBytes := spec.MaxBytes
			if i%2 == 0 {
				maxBytes = spec.MaxBytes * 3 / 4
			}
			_, err := rc.SetRetention(cctx, &pb.SetRetentionRequest{Policy: &pb.RetentionPolicy{Prefix: spec.Prefix, MaxBytes: maxBytes}})
			return err
		})
		if err != nil {
			kind += "_failed_" + status.Code(err).String() // Aborted: a stale plan
		}
		w.rec.retentionOp(kind)
	}
}
