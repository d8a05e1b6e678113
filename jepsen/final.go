package jepsen

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tsstore/tsstore/client"
	"github.com/tsstore/tsstore/client/train"
	"github.com/tsstore/tsstore/internal/proccluster"
	pb "github.com/tsstore/tsstore/proto/tsstorev1"
	"github.com/tsstore/tsstore/record"
)

// controlValue stands for a record of a control batch (not an event) in a
// replayed log.
const controlValue = "\x00control"

// recordValue is how the checkers see one stored record: its payload,
// except for records no client appended as such, which start with a NUL
// (isSystemValue): control records, and a run's "$fence" events, which
// become fenceValue(stream, payload). Replicas, reads, subscriptions and
// backups all map records through it, so they compare equal.
func recordValue(control bool, stream, typ string, payload []byte) string {
	switch {
	case control:
		return controlValue
	case typ == train.FenceType:
		return fenceValue(stream, payload)
	case strings.HasPrefix(stream, "$"):
		// A record the server wrote in a system stream (the leader's run
		// snapshots in "$snapshots"): unique, since its payload is.
		return fmt.Sprintf("\x00system %s %s %x", stream, typ, payload)
	case typ != "Appended" && typ != "":
		// A typed event (the compaction workload's training runs): its
		// msgpack payload repeats across runs, so the stream and type
		// make it unique.
		return typedValue(stream, typ, payload)
	}
	return string(payload)
}

// typedValue is the value of a typed event: stream, type and payload.
func typedValue(stream, typ string, payload []byte) string {
	return fmt.Sprintf("%s %s %x", stream, typ, payload)
}

// isSystemValue reports whether v stands for a record the server wrote.
func isSystemValue(v string) bool { return strings.HasPrefix(v, "\x00") }

// finalPhase runs after every fault is healed and the clients stopped: it
// waits for a leader, appends a marker (the cluster must accept writes
// again), waits until every node holds the same log end, and replays the
// whole log from every node. In a retention run it first removes the
// policy (no cut after the marker, so every node ends at one first kept
// offset), asks every node for its retention state and segment digests
// (nodeRetention), and replays each from its first kept offset. In a
// compaction run it first waits until compaction has settled
// (settleCompaction), then asks every node for its segment digests and
// what it answers about the workload's runs and deleted streams
// (nodeCompaction).
func finalPhase(ctx context.Context, c *cluster, rec *recorder, runID string, ret *RetentionSpec, compaction bool) ([]Replica, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	wctx, wcancel := context.WithTimeout(ctx, 60*time.Second)
	_, err := c.pc.WaitLeader(wctx)
	wcancel()
	if err != nil {
		return nil, fmt.Errorf("final phase: no leader after healing: %w", err)
	}
	if ret != nil {
		if _, err := setRetention(ctx, c, ret.Prefix, 0, true); err != nil {
			return nil, fmt.Errorf("final phase: %w", err)
		}
		rec.retentionRemoved()
	}
	marker, err := appendMarker(ctx, c, rec, runID)
	if err != nil {
		return nil, err
	}
	end, err := converge(ctx, c, marker+1)
	if err != nil {
		return nil, err
	}
	var comp *CompactionRun
	if compaction {
		if err := settleCompaction(ctx, c); err != nil {
			return nil, err
		}
		comp = rec.snapshot().Compaction
	}
	var reps []Replica
	for _, n := range c.nodes {
		var rr *ReplicaRetention
		var first uint64
		if ret != nil || compaction {
			rr = nodeRetention(ctx, n)
			first = rr.First
		}
		rep := readReplica(ctx, n, first, end)
		rep.Retention = rr
		if comp != nil {
			rep.Compaction = nodeCompaction(ctx, n, comp)
		}
		reps = append(reps, rep)
	}
	return reps, nil
}

// appendMarker appends one event and records it like any other append.
func appendMarker(ctx context.Context, c *cluster, rec *recorder, runID string) (uint64, error) {
	cfg := client.DefaultConfig(c.apiAddrs()...)
	cl, err := client.New(cfg)
	if err != nil {
		return 0, err
	}
	defer cl.Close()
	op := AppendOp{Process: "final", Idempotent: true, Values: []string{"final-marker"}, Invoke: rec.now()}
	p := cl.NewProducer("final-" + runID)
	deadline := time.Now().Add(60 * time.Second)
	for {
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		res, err := p.Append(actx, events(op.Values)...)
		cancel()
		op.Attempts++
		if err == nil {
			op.Outcome, op.First, op.Err, op.Complete = OK, res.FirstOffset, "", rec.now()
			rec.append(op)
			return res.FirstOffset, nil
		}
		if !client.MayHaveCommitted(err) || time.Now().After(deadline) || ctx.Err() != nil {
			op.Outcome, op.Err, op.Complete = Unknown, err.Error(), rec.now()
			rec.append(op)
			return 0, fmt.Errorf("final phase: the healed cluster did not accept an append: %w", err)
		}
		sleepCtx(ctx, 200*time.Millisecond)
	}
}

// converge waits until every node reports the same next offset, at least
// min, twice in a row, and returns it.
func converge(ctx context.Context, c *cluster, min uint64) (uint64, error) {
	deadline := time.Now().Add(60 * time.Second)
	var last, prev uint64
	var why string
	for {
		last, why = 0, ""
		for _, n := range c.nodes {
			st, err := nodeStatus(ctx, n)
			switch {
			case err != nil:
				why = fmt.Sprintf("%s: %v", n.ID, err)
			case st.NextOffset < min:
				why = fmt.Sprintf("%s at offset %d, want %d", n.ID, st.NextOffset, min)
			case last != 0 && st.NextOffset != last:
				why = fmt.Sprintf("next offsets differ: %d vs %d", st.NextOffset, last)
			default:
				last = st.NextOffset
			}
			if why != "" {
				break
			}
		}
		if why == "" && last == prev {
			return last, nil
		}
		prev = last
		if time.Now().After(deadline) || ctx.Err() != nil {
			return 0, fmt.Errorf("final phase: replicas did not converge within 60s: %s", why)
		}
		sleepCtx(ctx, 300*time.Millisecond)
	}
}

// readReplica replays offsets [first, end) from one node with a local
// read, as raw batches: their bytes are hashed, their records decoded and
// checked for contiguity. Offsets below first (retention cut them) hold
// compactedValue.
func readReplica(ctx context.Context, n *proccluster.Node, first, end uint64) Replica {
	rep := Replica{Node: n.ID, First: first}
	for range min(first, end) {
		rep.Values = append(rep.Values, compactedValue)
		rep.Streams = append(rep.Streams, "")
	}
	conn, err := grpc.NewClient(n.APIAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
	if err != nil {
		rep.Err = err.Error()
		return rep
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	stream, err := pb.NewEventStoreClient(conn).Read(ctx, &pb.ReadRequest{FromOffset: first, ToOffset: end, MinNextOffset: end})
	if err != nil {
		rep.Err = err.Error()
		return rep
	}
	h := sha256.New()
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			rep.Err = err.Error()
			return rep
		}
		h.Write(resp.Batches)
		rep.Bytes += len(resp.Batches)
		if err := decodeInto(&rep, resp.Batches, end); err != nil {
			rep.Err = err.Error()
			return rep
		}
	}
	rep.Length = len(rep.Values)
	rep.Hash = fmt.Sprintf("%x", h.Sum(nil))
	if uint64(rep.Length) != end && rep.Err == "" {
		rep.Err = fmt.Sprintf("replayed %d events, the log holds %d", rep.Length, end)
	}
	return rep
}

// decodeInto appends the records of buf below end to rep.Values, noting
// every offset where the log does not continue.
func decodeInto(rep *Replica, buf []byte, end uint64) error {
	for len(buf) > 0 {
		b, rest, err := record.Next(buf)
		if err != nil {
			return fmt.Errorf("undecodable batch after offset %d: %w", len(rep.Values), err)
		}
		buf = rest
		h := b.Header()
		if h.IsControl() {
			// A control batch stands for offsets whose events are not
			// served (a deleted stream's, hidden before any rewrite).
			if uint64(len(rep.Values)) >= h.BaseOffset {
				padCompacted(rep, min(h.NextOffset(), end))
			}
			continue
		}
		it := b.Records()
		var r record.Record
		for it.Next(&r) {
			if r.Offset >= end {
				break
			}
			if !h.Complete() && r.Offset > uint64(len(rep.Values)) && uint64(len(rep.Values)) >= h.BaseOffset {
				// Offsets of the batch's span that compaction dropped.
				padCompacted(rep, r.Offset)
			}
			if r.Offset != uint64(len(rep.Values)) {
				rep.Gaps = append(rep.Gaps, uint64(len(rep.Values)))
				for uint64(len(rep.Values)) < r.Offset {
					rep.Values = append(rep.Values, "")
					rep.Streams = append(rep.Streams, "")
				}
				if r.Offset < uint64(len(rep.Values)) {
					continue // overlap: keep the first value
				}
			}
			// Batches are stream-homogeneous: share the previous string.
			var stream string
			if n := len(rep.Streams); n > 0 && rep.Streams[n-1] == string(r.Stream) {
				stream = rep.Streams[n-1]
			} else {
				stream = string(r.Stream)
			}
			rep.Values = append(rep.Values, recordValue(h.IsControl(), stream, string(r.Type), r.Payload))
			rep.Streams = append(rep.Streams, stream)
		}
		if err := it.Err(); err != nil {
			return fmt.Errorf("bad record in batch at offset %d: %w", h.BaseOffset, err)
		}
		if !h.Complete() && uint64(len(rep.Values)) >= h.BaseOffset {
			padCompacted(rep, min(h.NextOffset(), end))
		}
	}
	return nil
}

// padCompacted fills rep up to offset to with compactedValue: offsets a
// thinned batch's span covers and whose records compaction dropped (the
// batch says so; package record). Rule 13 judges them.
func padCompacted(rep *Replica, to uint64) {
	for uint64(len(rep.Values)) < to {
		rep.Values = append(rep.Values, compactedValue)
		rep.Streams = append(rep.Streams, "")
	}
}
