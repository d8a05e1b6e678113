package server

import (
	"context"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tsstore/tsstore/fsm"
	pb "github.com/tsstore/tsstore/proto/tsstorev1"
	"github.com/tsstore/tsstore/segment"
)

// Self-repair of sealed segments (docs/design.md, failure modes;
// docs/operations.md, Repairing damaged segments).
//
// Sealed segments are byte-identical on every replica, so a node whose
// copy is damaged fetches a peer's (FetchSegment), which segment.Log's
// ReplaceSealed verifies and swaps in; the snapshots that hard-link the
// damaged file are pointed at the new one. Repairs are scheduled by
// whoever finds the damage: Open (segments kept as damaged), a read that
// hits a *segment.CorruptionError, a snapshot refused because of a damaged
// segment, a snapshot send to a follower that found bad bytes, a backup,
// a peer's FetchSegment; and run at once by RepairSegments (`tsstore
// repair`). One goroutine (repairLoop) works the queue, retrying what
// failed with a growing delay.

// Repair results, in SegmentRepair.result and the result label of
// tsstore_segment_repairs_total.
const (
	repairHealthy  = "healthy"
	repairRepaired = "repaired"
	repairFailed   = "failed"
)

const (
	// repairChunkBytes is the data carried by one FetchSegmentResponse.
	repairChunkBytes = 1 << 20
	// repairRetryMin and repairRetryMax bound the delay before a failed
	// repair is tried again (all peers down, or all copies bad).
	repairRetryMin = time.Second
	repairRetryMax = time.Minute
	// repairFetchTimeout bounds one fetch of a segment from one peer.
	repairFetchTimeout = 2 * time.Minute
	// snapshotRepairRetry is how often a snapshot that still fails to
	// verify is checked again.
	snapshotRepairRetry = 5 * time.Second
)

// repairQueue is the set of segments waiting for a repair.
type repairQueue struct {
	mu struct {
		sync.Mutex
		pending map[uint64]time.Time // base offset -> not before
		delay   map[uint64]time.Duration
		// snapshots are snapshot ids whose stream failed to verify
		// (repair_snapshots.go), checked again once segments are repaired.
		snapshots map[string]bool
	}
	kick chan struct{}
	// running serializes repairs (the loop's and RepairSegments').
	running sync.Mutex
}

func (q *repairQueue) init() {
	q.mu.pending = map[uint64]time.Time{}
	q.mu.delay = map[uint64]time.Duration{}
	q.mu.snapshots = map[string]bool{}
	q.kick = make(chan struct{}, 1)
}

// noteCorruption schedules a repair of the segment err names, if err is a
// corruption error that names one. It returns err unchanged.
func (n *Node) noteCorruption(err error) error {
	if base, ok := segment.CorruptSegment(err); ok {
		n.scheduleRepair(base, err)
	}
	return err
}

// scheduleRepair queues a repair of the sealed segment at base.
func (n *Node) scheduleRepair(base uint64, why error) {
	q := &n.repairs
	q.mu.Lock()
	_, queued := q.mu.pending[base]
	if !queued {
		q.mu.pending[base] = time.Time{}
	}
	q.mu.Unlock()
	if !queued {
		n.logger.Warn("damaged segment found; repairing it from a peer", "segment", segment.FileName(base), "error", why)
	}
	select {
	case q.kick <- struct{}{}:
	default:
	}
}

// damagedCount is what tsstore_segments_damaged reports: segments waiting
// for a repair, plus those Open kept as damaged.
func (n *Node) damagedCount() int {
	q := &n.repairs
	q.mu.Lock()
	set := make(map[uint64]bool, len(q.mu.pending))
	for b := range q.mu.pending {
		set[b] = true
	}
	q.mu.Unlock()
	if n.proc != nil {
		for _, d := range n.proc.Damaged() {
			set[d.BaseOffset] = true
		}
	}
	return len(set)
}

// repairLoop works the repair queue until shutdown.
func (n *Node) repairLoop() {
	q := &n.repairs
	for _, d := range n.proc.Damaged() {
		n.scheduleRepair(d.BaseOffset, d.Err)
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		base, wait, ok := q.next()
		if ok && wait <= 0 {
			n.repairQueued(base)
			continue
		}
		if !ok {
			wait = time.Hour
		}
		if n.repairSnapshots() > 0 {
			wait = min(wait, snapshotRepairRetry)
		}
		timer.Reset(wait)
		select {
		case <-q.kick:
		case <-timer.C:
		case <-n.shutdown:
			return
		}
	}
}

// next returns the queued segment due first and how long until it is due.
func (q *repairQueue) next() (base uint64, wait time.Duration, ok bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	var due time.Time
	for b, t := range q.mu.pending {
		if !ok || t.Before(due) {
			base, due, ok = b, t, true
		}
	}
	return base, time.Until(due), ok
}

// repairQueued repairs one queued segment and requeues it, later, if that
// failed.
func (n *Node) repairQueued(base uint64) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-n.shutdown:
			cancel()
		case <-ctx.Done():
		}
	}()
	r := n.repairSegment(ctx, base, "")
	q := &n.repairs
	q.mu.Lock()
	defer q.mu.Unlock()
	if r.Result == repairHealthy {
		n.logger.Info("segment checks out healthy on this node; nothing to repair", "segment", segment.FileName(base))
	}
	if r.Result != repairFailed || r.gone {
		// Repaired, healthy, or no longer a sealed segment of this log
		// (a snapshot install replaced the whole log meanwhile).
		delete(q.mu.pending, base)
		delete(q.mu.delay, base)
		return
	}
	d := min(max(2*q.mu.delay[base], repairRetryMin), repairRetryMax)
	q.mu.delay[base] = d
	q.mu.pending[base] = time.Now().Add(d)
	n.logger.Error("repairing a damaged segment failed; trying again later", "segment", segment.FileName(base),
		"error", r.Error, "retry_in", d.String())
}

// repairSegment checks the sealed segment at base and, if it is damaged,
// repairs it: from its own .log when only an index file is bad, otherwise
// from the first peer (or only from) whose copy verifies. It never
// returns an error: the outcome is in the result.
func (n *Node) repairSegment(ctx context.Context, base uint64, from string) repairOutcome {
	n.repairs.running.Lock()
	defer n.repairs.running.Unlock()
	res := &pb.SegmentRepair{BaseOffset: base}
	fail := func(err error) repairOutcome {
		res.Result, res.Error = repairFailed, err.Error()
		n.metrics.repairs.WithLabelValues(repairFailed).Inc()
		return repairOutcome{res, false}
	}
	damage := n.proc.WithLog(func(l *segment.Log) error { return l.VerifySegment(base) })
	var ce *segment.CorruptionError
	switch {
	case damage == nil:
		res.Result = repairHealthy
		return repairOutcome{res, false}
	case errors.Is(damage, segment.ErrNotSealed):
		res.Result = repairFailed
		res.Error = fmt.Sprintf("%v: only sealed segments can be repaired from a peer (damage in the active segment is cut at the next start, and Raft re-applies it)", damage)
		return repairOutcome{res, true}
	case !errors.As(damage, &ce):
		return fail(damage)
	}
	res.Damage = damage.Error()
	if ce.Key != "" {
		// A tiered segment: every node reads this one object, so no peer
		// holds a copy to repair it with (re-uploading is not built).
		return fail(fmt.Errorf("%w: the segment's bytes are the tiered object %q, which no peer can replace; restore the object (docs/operations.md, Cold tiering)", damage, ce.Key))
	}
	if !ce.LogDamaged() && from == "" {
		// Only an index file is bad: rebuild it from the local .log.
		if err := n.replaceFromSelf(base); err == nil {
			res.Result, res.FromNodeId = repairRepaired, n.cfg.NodeID
			n.metrics.repairs.WithLabelValues(repairRepaired).Inc()
			n.logger.Info("segment index rebuilt from the local log", "segment", segment.FileName(base), "damage", damage)
			return repairOutcome{res, false}
		}
	}
	peers, err := n.repairPeers(from)
	if err != nil {
		return fail(err)
	}
	var errs []error
	for _, p := range peers {
		size, err := n.fetchAndReplace(ctx, p.id, p.addr, base)
		if err != nil {
			errs = append(errs, fmt.Errorf("from %s: %w", p.id, err))
			continue
		}
		res.Result, res.FromNodeId, res.SizeBytes = repairRepaired, p.id, uint64(size)
		n.metrics.repairs.WithLabelValues(repairRepaired).Inc()
		n.logger.Info("damaged segment repaired with a peer's copy", "segment", segment.FileName(base), "from", p.id,
			"bytes", size, "damage", damage)
		return repairOutcome{res, false}
	}
	return fail(fmt.Errorf("no peer had a good copy of %s (every replica's copy may be damaged: see docs/operations.md, Repairing damaged segments): %w",
		segment.FileName(base), errors.Join(errs...)))
}

// replaceFromSelf replaces a segment with its own .log, which rebuilds its
// index files (ReplaceSealed verifies the .log first).
func (n *Node) replaceFromSelf(base uint64) error {
	return n.proc.WithLog(func(l *segment.Log) error {
		r, err := l.OpenSealed(base)
		if err != nil {
			return err
		}
		defer r.Close()
		return l.ReplaceSealed(base, io.NewSectionReader(r, 0, r.Info().Size))
	})
}

// repairOutcome is a repair's result; gone means base names no sealed
// segment of the log (nothing to retry).
type repairOutcome struct {
	*pb.SegmentRepair
	gone bool
}

type repairPeer struct{ id, addr string }

// repairPeers lists the members to fetch from, in turn: only from if
// given, otherwise every other member of the Raft configuration with a
// registered API address (voters first).
func (n *Node) repairPeers(from string) ([]repairPeer, error) {
	servers, _, err := n.configuration()
	if err != nil {
		return nil, err
	}
	nodes := n.proc.Nodes()
	sort.SliceStable(servers, func(i, j int) bool { return servers[i].Suffrage < servers[j].Suffrage })
	var out []repairPeer
	for _, s := range servers {
		id := string(s.ID)
		if id == n.cfg.NodeID || (from != "" && id != from) || nodes[id] == "" {
			continue
		}
		out = append(out, repairPeer{id: id, addr: nodes[id]})
	}
	if len(out) == 0 {
		if from != "" {
			return nil, status.Errorf(codes.NotFound, "node %q is not another member with a registered API address", from)
		}
		return nil, errors.New("no other member with a registered API address to fetch from")
	}
	return out, nil
}

// fetchAndReplace fetches a peer's copy of the segment at base and hands it
// to ReplaceSealed, which refuses it unless it verifies; then it points
// the snapshots that link the old file at the new one.
func (n *Node) fetchAndReplace(ctx context.Context, id, addr string, base uint64) (int64, error) {
	conn, err := n.peers.get(addr)
	if err != nil {
		return 0, err
	}
	var size int64
	err = n.proc.WithLog(func(l *segment.Log) error {
		var err error
		size, err = n.fetchInto(ctx, pb.NewRepairClient(conn), base, l, n.snaps)
		return err
	})
	return size, err
}

// fetchInto fetches the segment at base through c and replaces the
// damaged copy in l with it; snapshots in snaps (if not nil) that linked
// the old file then link the new one.
func (n *Node) fetchInto(ctx context.Context, c pb.RepairClient, base uint64, l *segment.Log, snaps *fsm.SnapshotStore) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, repairFetchTimeout)
	defer cancel()
	stream, err := c.FetchSegment(ctx, &pb.FetchSegmentRequest{BaseOffset: base})
	if err != nil {
		return 0, err
	}
	first, err := stream.Recv()
	if err != nil {
		return 0, err
	}
	info := first.GetInfo()
	if info == nil || info.BaseOffset != base {
		return 0, fmt.Errorf("the first message does not describe segment %d", base)
	}
	r := &fetchReader{recv: stream.Recv, size: int64(info.SizeBytes), crc: crc32.New(castagnoli)}
	r.take(first)
	path := filepath.Join(l.Dir(), segment.FileName(base))
	old, statErr := os.Stat(path)
	if err := l.ReplaceSealed(base, r); err != nil {
		return 0, err
	}
	if statErr == nil && snaps != nil {
		if k, err := snaps.Relink(old, path); err != nil {
			n.logger.Warn("pointing snapshots at the repaired segment", "segment", segment.FileName(base), "error", err)
		} else if k > 0 {
			n.logger.Info("snapshots now link the repaired segment", "segment", segment.FileName(base), "links", k)
		}
	}
	return r.got, nil
}

// fetchReader reads a FetchSegment stream as the .log's bytes. At the end
// of the stream it checks the size and the whole-file checksum the peer
// sent, and returns io.EOF only if both match.
type fetchReader struct {
	recv    func() (*pb.FetchSegmentResponse, error)
	size    int64
	got     int64
	crc     hash.Hash32
	pending []byte
	sum     *uint32
	err     error
}

func (r *fetchReader) take(m *pb.FetchSegmentResponse) {
	r.pending = m.Data
	r.got += int64(len(m.Data))
	r.crc.Write(m.Data)
	if m.FileCrc32C != nil {
		r.sum = m.FileCrc32C
	}
}

func (r *fetchReader) Read(p []byte) (int, error) {
	for len(r.pending) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		m, err := r.recv()
		switch {
		case err == io.EOF && r.sum == nil:
			r.err = errors.New("the stream ended without the file's checksum")
		case err == io.EOF && r.got != r.size:
			r.err = fmt.Errorf("received %d bytes, the peer announced %d", r.got, r.size)
		case err == io.EOF && *r.sum != r.crc.Sum32():
			r.err = fmt.Errorf("the file's CRC-32C is %08x, the peer sent %08x", r.crc.Sum32(), *r.sum)
		case err != nil:
			r.err = err
		default:
			r.take(m)
		}
	}
	k := copy(p, r.pending)
	r.pending = r.pending[k:]
	return k, nil
}

// repairService serves the Repair gRPC service.
type repairService struct {
	pb.UnimplementedRepairServer
	n *Node
}

// FetchSegment streams this node's copy of a sealed segment, verified
// before it is sent (a damaged copy is refused with DataLoss and queued
// for repair here).
func (s *repairService) FetchSegment(req *pb.FetchSegmentRequest, stream pb.Repair_FetchSegmentServer) error {
	n := s.n
	var r *segment.SealedReader
	err := n.proc.WithLog(func(l *segment.Log) error {
		var err error
		if r, err = l.OpenSealed(req.BaseOffset); err != nil {
			return err
		}
		if err := l.VerifySegment(req.BaseOffset); err != nil {
			r.Close()
			return n.noteCorruption(err)
		}
		return nil
	})
	if errors.Is(err, segment.ErrNotSealed) {
		return status.Error(codes.NotFound, err.Error())
	}
	if err != nil {
		return toStatus(err)
	}
	// The reader holds the file open by itself (a replace or a snapshot
	// install meanwhile does not cut it off), so the log is not held for
	// the length of the stream.
	defer r.Close()
	return toStatus(sendSegment(stream, r))
}

// sendSegment streams r: its info, its bytes, then their CRC-32C.
func sendSegment(stream pb.Repair_FetchSegmentServer, r *segment.SealedReader) error {
	info := r.Info()
	if err := stream.Send(&pb.FetchSegmentResponse{Info: &pb.SegmentFileInfo{
		BaseOffset: info.BaseOffset, NextOffset: info.NextOffset, SizeBytes: uint64(info.Size)}}); err != nil {
		return err
	}
	crc := crc32.New(castagnoli)
	for pos := int64(0); pos < info.Size; {
		// A fresh buffer per message: gRPC may hold a sent message.
		buf := make([]byte, min(repairChunkBytes, info.Size-pos))
		if k, err := r.ReadAt(buf, pos); k < len(buf) {
			return fmt.Errorf("segment: read %s at %d: %d of %d bytes: %w", info.Path, pos, k, len(buf), err)
		}
		crc.Write(buf)
		if err := stream.Send(&pb.FetchSegmentResponse{Data: buf}); err != nil {
			return err
		}
		pos += int64(len(buf))
	}
	sum := crc.Sum32()
	return stream.Send(&pb.FetchSegmentResponse{FileCrc32C: &sum})
}

// RepairSegments checks the asked segments (or every sealed segment) and
// repairs the damaged ones now.
func (s *repairService) RepairSegments(ctx context.Context, req *pb.RepairSegmentsRequest) (*pb.RepairSegmentsResponse, error) {
	n := s.n
	bases, asked := req.BaseOffsets, len(req.BaseOffsets) > 0
	if !asked {
		_ = n.proc.WithLog(func(l *segment.Log) error {
			for _, si := range l.Segments() {
				if si.Sealed && !si.Tiered { // tiered: verify --tiered checks the objects
					bases = append(bases, si.BaseOffset)
				}
			}
			return nil
		})
	}
	resp := &pb.RepairSegmentsResponse{NodeId: n.cfg.NodeID}
	for _, base := range bases {
		if err := ctx.Err(); err != nil {
			return nil, status.FromContextError(err).Err()
		}
		r := n.repairSegment(ctx, base, req.FromNodeId)
		resp.Checked++
		if r.Result != repairFailed || r.gone {
			n.repairs.done(base)
		}
		if asked || r.Result != repairHealthy {
			resp.Segments = append(resp.Segments, r.SegmentRepair)
		}
	}
	return resp, nil
}

// done takes a repaired segment off the queue.
func (q *repairQueue) done(base uint64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	delete(q.mu.pending, base)
	delete(q.mu.delay, base)
}
