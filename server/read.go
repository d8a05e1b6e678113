package server

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/tsstore/tsstore/proto/tsstorev1"
	"github.com/tsstore/tsstore/record"
	"github.com/tsstore/tsstore/segment"
)

// selection is a validated ReadRequest: where to start and what to keep.
type selection struct {
	from, to   uint64 // [from, to); to == 0: no upper bound
	stream     string
	prefix     string
	types      map[string]bool
	maxBytes   int
	filtered   bool
	fromVer    uint64
	fromTimeNs int64
	decoded    bool // send DecodedEvents, not batches (read_decoded.go)
	// deleted hides the events of deleted streams that are still in the
	// segments (stream -> deleted up to offset), in every read;
	// deletedUpto is the highest of those offsets.
	deleted     map[string]uint64
	deletedUpto uint64
}

func (n *Node) newSelection(req *pb.ReadRequest) (*selection, error) {
	if req.ToOffset != 0 && req.ToOffset < req.FromOffset {
		return nil, invalidArg("to_offset %d is before from_offset %d", req.ToOffset, req.FromOffset)
	}
	if req.FromVersion != 0 && req.Stream == "" {
		return nil, invalidArg("from_version needs stream")
	}
	sel := &selection{from: req.FromOffset, to: req.ToOffset, stream: req.Stream, prefix: req.StreamPrefix,
		fromVer: req.FromVersion, fromTimeNs: req.FromTimestampUnixNano, decoded: req.Decoded}
	if len(req.EventTypes) > 0 {
		sel.types = make(map[string]bool, len(req.EventTypes))
		for _, t := range req.EventTypes {
			sel.types[t] = true
		}
	}
	sel.filtered = sel.stream != "" || sel.prefix != "" || sel.types != nil
	for _, d := range n.proc.DeletedStreams() {
		if sel.deleted == nil {
			sel.deleted = map[string]uint64{}
		}
		sel.deleted[d.Stream] = d.Upto
		sel.deletedUpto = max(sel.deletedUpto, d.Upto)
	}
	sel.maxBytes = int(req.MaxMessageBytes)
	if sel.maxBytes <= 0 || sel.maxBytes > 4*n.cfg.ReadMessageBytes {
		sel.maxBytes = n.cfg.ReadMessageBytes
	}
	return sel, nil
}

// resolveStart moves sel.from to the first offset selected by a timestamp
// or a stream version; a version not reached yet starts at the log's end.
// A single-stream read from below the stream's first event starts at that
// event: the stream has nothing below it, and the log may not either (a
// retention cut of older segments would refuse a read from 0 as compacted
// although every event of the stream is kept).
func (n *Node) resolveStart(sel *selection) error {
	if sel.stream != "" {
		if info, ok := n.proc.StreamInfo(sel.stream); ok && sel.from < info.FirstOffset {
			sel.from = info.FirstOffset
			if sel.to != 0 {
				sel.from = min(sel.from, sel.to)
			}
		}
	}
	return n.proc.WithLog(func(l *segment.Log) error {
		if sel.fromTimeNs != 0 {
			sel.from = max(sel.from, l.OffsetForTime(sel.fromTimeNs))
		}
		if sel.fromVer > 1 {
			off, ok, err := l.StreamOffset(sel.stream, sel.fromVer)
			if err != nil {
				return err
			}
			if !ok {
				off = l.NextOffset()
			}
			sel.from = max(sel.from, off)
		}
		return n.checkStreamCompacted(sel)
	})
}

// checkStreamCompacted refuses a single-stream read (no event types)
// that starts inside the range run compaction thinned: its versions
// would jump, which the SDK takes for a gap. The error is the typed
// OFFSET_COMPACTED with the first offset the stream is whole from.
func (n *Node) checkStreamCompacted(sel *selection) error {
	if sel.stream == "" || sel.types != nil {
		return nil
	}
	upto := n.proc.StreamCompactedUpto(sel.stream)
	if upto == 0 || sel.from > upto {
		return nil
	}
	return fmt.Errorf("stream %q: run compaction dropped its events up to offset %d but the kept types (read from offset %d, from a run snapshot, or with event types): %w",
		sel.stream, upto, upto+1, &segment.OffsetCompactedError{Offset: sel.from, FirstOffset: upto + 1})
}

func (sel *selection) keep(r *record.Record) bool {
	if sel.stream != "" && string(r.Stream) != sel.stream {
		return false
	}
	if sel.prefix != "" && !strings.HasPrefix(string(r.Stream), sel.prefix) {
		return false
	}
	if sel.types != nil && !sel.types[string(r.Type)] {
		return false
	}
	if sel.fromVer > 0 && r.StreamVersion < sel.fromVer {
		return false
	}
	if upto, ok := sel.deleted[string(r.Stream)]; ok && r.Offset <= upto {
		return false
	}
	return r.Offset >= sel.from && (sel.to == 0 || r.Offset < sel.to)
}

// reader produces the messages of one Read or Subscribe call. Its buffers
// come from a pool and go back after every message, so an idle subscriber
// holds no buffer.
type reader struct {
	n   *Node
	sel *selection
	b   record.Builder
	m   *readMetrics
	// budget bounds what the stream has handed to gRPC (sendbudget.go).
	budget *sendBudget
	// started: a message was produced; the next ones continue at sel.from.
	started bool
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 1<<20); return &b }}

// next reads the next message's batches, covering [sel.from, next) up to
// end. It returns the bytes (from the pool: release them with put) and the
// new position.
func (r *reader) next(end uint64) (*[]byte, uint64, error) {
	raw := bufPool.Get().(*[]byte)
	var next uint64
	err := r.n.proc.WithLog(func(l *segment.Log) error {
		var err error
		if r.sel.stream != "" {
			// Not past end: a segment beyond it is never read (a tiered
			// one's object fetched, or its damage failing this read).
			*raw, next, err = l.StreamBatchesTo((*raw)[:0], r.sel.stream, r.sel.from, end, r.sel.maxBytes)
		} else {
			*raw, next, err = l.ReadBatchesTo((*raw)[:0], r.sel.from, end, r.sel.maxBytes)
		}
		return err
	})
	if err != nil {
		put(raw)
		return nil, 0, err
	}
	if next > end {
		// Batches appended after `end` was taken belong to the next
		// message: a message never holds a batch past its next_offset.
		*raw, next = trimAt(*raw, end)
	}
	if r.started {
		// A continuing message starts where the previous one ended. A
		// segment rewrite (run compaction, deletion) committed since may
		// have merged the batch that started there into the span of an
		// earlier one: send that batch's part from sel.from on, rebased
		// (a control batch if it has no record there), or the client sees
		// a batch that does not continue the log (the SDK: a protocol
		// error; jepsen's compaction scenario found it).
		*raw = rebaseFrom(&r.b, *raw, r.sel.from)
	}
	r.started = true
	if !r.sel.filtered {
		if len(r.sel.deleted) == 0 || firstBase(*raw) > r.sel.deletedUpto {
			return raw, next, nil
		}
		out := bufPool.Get().(*[]byte)
		*out, err = r.hideDeleted((*out)[:0], *raw, next)
		put(raw)
		if err != nil {
			put(out)
			return nil, 0, err
		}
		return out, next, nil
	}
	out := bufPool.Get().(*[]byte)
	*out, err = r.filter((*out)[:0], *raw, next)
	put(raw)
	if err != nil {
		put(out)
		return nil, 0, err
	}
	return out, next, nil
}

// filter re-encodes the batches of raw keeping only selected records. A
// thinned batch keeps its span (base offset and last delta), so the client
// knows which offsets it covers; a batch with no selected record is
// dropped. The message as a whole covers [sel.from, next).
func (r *reader) filter(dst, raw []byte, next uint64) ([]byte, error) {
	for len(raw) > 0 {
		b, rest, err := record.Next(raw)
		if err != nil {
			return dst, err
		}
		raw = rest
		h := b.Header()
		if h.BaseOffset >= next {
			break
		}
		it := b.Records()
		var rec record.Record
		kept, all := 0, true
		// A thinned batch is re-encoded uncompressed.
		r.b.Reset(h.BaseOffset, h.RaftIndex, h.Timestamp, h.Attributes&^record.AttrCompressionMask)
		for it.Next(&rec) {
			if !r.sel.keep(&rec) {
				all = false
				continue
			}
			if err := r.b.AddAt(&rec, rec.Offset-h.BaseOffset); err != nil {
				return dst, err
			}
			kept++
		}
		if err := it.Err(); err != nil {
			return dst, err
		}
		switch {
		case kept == 0:
		case all:
			dst = append(dst, b...)
		default:
			r.b.ExtendSpan(uint64(h.LastDelta))
			fb, err := r.b.Finish()
			if err != nil {
				return dst, err
			}
			dst = append(dst, fb...)
		}
	}
	return dst, nil
}

// deletedStream and deletedType name the record of the control batch that
// stands, in an unfiltered read, for offsets whose events are not served:
// a batch whose every record belongs to deleted streams (hideDeleted), or
// the part of a rewritten batch below a stream's position (rebaseFrom).
const (
	deletedStream = "$deleted"
	deletedType   = "$deleted"
)

// hideDeleted re-encodes, for an unfiltered read, the batches of raw that
// hold events of deleted streams (at or below their delete's offset)
// without them, keeping every batch's span so that the read stays
// contiguous: a batch left with some records is thinned (as a rewrite
// would make it); one left with none becomes a control batch over the
// same span holding one marker record (readers skip control records; the
// format has no empty batch). Batches above every delete are copied as
// they are. So a delete hides its events from every read at once, not
// only once the segments holding them are rewritten.
func (r *reader) hideDeleted(dst, raw []byte, next uint64) ([]byte, error) {
	for len(raw) > 0 {
		b, rest, err := record.Next(raw)
		if err != nil {
			return dst, err
		}
		h := b.Header()
		if h.BaseOffset >= next {
			break
		}
		if h.BaseOffset > r.sel.deletedUpto {
			return append(dst, raw...), nil // the rest is newer than every delete
		}
		raw = rest
		if h.IsControl() || !r.holdsDeleted(b) {
			dst = append(dst, b...)
			continue
		}
		r.b.Reset(h.BaseOffset, h.RaftIndex, h.Timestamp, h.Attributes&^record.AttrCompressionMask)
		it := b.Records()
		var rec record.Record
		for it.Next(&rec) {
			if r.isDeleted(&rec) {
				continue
			}
			if err := r.b.AddAt(&rec, rec.Offset-h.BaseOffset); err != nil {
				return dst, err
			}
		}
		if err := it.Err(); err != nil {
			return dst, err
		}
		if r.b.Count() == 0 {
			r.b.Reset(h.BaseOffset, h.RaftIndex, h.Timestamp, (h.Attributes&^record.AttrCompressionMask)|record.AttrControl)
			marker := record.Record{Offset: h.BaseOffset, Stream: []byte(deletedStream), Type: []byte(deletedType)}
			if err := r.b.AddAt(&marker, 0); err != nil {
				return dst, err
			}
		}
		r.b.ExtendSpan(uint64(h.LastDelta))
		fb, err := r.b.Finish()
		if err != nil {
			return dst, err
		}
		dst = append(dst, fb...)
	}
	return dst, nil
}

// holdsDeleted reports whether batch b holds an event of a deleted stream.
func (r *reader) holdsDeleted(b record.Batch) bool {
	it := b.Records()
	var rec record.Record
	for it.Next(&rec) {
		if r.isDeleted(&rec) {
			return true
		}
	}
	return false
}

func (r *reader) isDeleted(rec *record.Record) bool {
	upto, ok := r.sel.deleted[string(rec.Stream)]
	return ok && rec.Offset <= upto
}

// firstBase is the base offset of raw's first batch (0 if it has none).
func firstBase(raw []byte) uint64 {
	h, err := record.ParseHeader(raw)
	if err != nil {
		return 0
	}
	return h.BaseOffset
}

// rebaseFrom returns raw with its first batch made to start at from if it
// starts before it: re-encoded (uncompressed) with base offset from, the
// records at or after from and the same span end; or, if none of its
// records is at or after from, a control batch over [from, its end] with
// one marker record, as hideDeleted sends for offsets whose events are
// not served (readers skip control records). raw is returned unchanged
// when its first batch starts at or after from, and the bytes of the
// result are raw's for the rest.
func rebaseFrom(b *record.Builder, raw []byte, from uint64) []byte {
	h, err := record.ParseHeader(raw)
	if err != nil || h.BaseOffset >= from {
		return raw
	}
	first, rest, err := record.Next(raw)
	if err != nil {
		return raw
	}
	attrs := h.Attributes &^ record.AttrCompressionMask
	if !hasRecordFrom(first, from) {
		attrs |= record.AttrControl
	}
	b.Reset(from, h.RaftIndex, h.Timestamp, attrs)
	if attrs&record.AttrControl != 0 {
		marker := record.Record{Offset: from, Stream: []byte(deletedStream), Type: []byte(deletedType)}
		if err := b.AddAt(&marker, 0); err != nil {
			return raw
		}
	} else {
		it := first.Records()
		var rec record.Record
		for it.Next(&rec) {
			if rec.Offset < from {
				continue
			}
			if err := b.AddAt(&rec, rec.Offset-from); err != nil {
				return raw
			}
		}
		if it.Err() != nil {
			return raw
		}
	}
	b.ExtendSpan(h.LastOffset() - from)
	fb, err := b.Finish()
	if err != nil {
		return raw
	}
	out := make([]byte, 0, len(fb)+len(rest))
	return append(append(out, fb...), rest...)
}

// hasRecordFrom reports whether batch b holds a record at or after from.
func hasRecordFrom(b record.Batch, from uint64) bool {
	it := b.Records()
	var rec record.Record
	for it.Next(&rec) {
		if rec.Offset >= from {
			return true
		}
	}
	return false
}

// trimAt cuts raw before the first batch that starts at or after end and
// returns the offset after the last batch kept (or end, if a batch kept
// spans it).
func trimAt(raw []byte, end uint64) ([]byte, uint64) {
	next := end
	for rest := raw; len(rest) > 0; {
		h, err := record.ParseHeader(rest)
		if err != nil || h.BaseOffset >= end {
			return raw[:len(raw)-len(rest)], next
		}
		next = max(end, h.NextOffset())
		rest = rest[h.Size():]
	}
	return raw, next
}

func put(b *[]byte) {
	if cap(*b) <= 8<<20 {
		bufPool.Put(b)
	}
}

// Read streams the selected history and ends at the log's end (or
// to_offset). It never waits for new events; Subscribe does.
func (s *service) Read(req *pb.ReadRequest, stream pb.EventStore_ReadServer) error {
	n := s.n
	ctx := stream.Context()
	release, err := n.acquireReadStream(ctx)
	if err != nil {
		return err
	}
	defer release()
	sel, err := n.newSelection(req)
	if err != nil {
		return err
	}
	if err := n.waitReadable(ctx, req); err != nil {
		return toStatus(err)
	}
	if sel.stream != "" {
		info, ok := n.proc.StreamInfo(sel.stream)
		if !ok {
			return withReason(codes.NotFound, pb.ErrorReason_ERROR_REASON_STREAM_NOT_FOUND,
				fmt.Sprintf("stream %q has no events", sel.stream), map[string]string{"stream": sel.stream})
		}
		if d, del := n.proc.StreamDeleted(sel.stream); del && info.LastOffset <= d.Upto {
			return withReason(codes.NotFound, pb.ErrorReason_ERROR_REASON_STREAM_NOT_FOUND,
				fmt.Sprintf("stream %q was deleted (its %d events up to offset %d; `tsstore streams delete`)", sel.stream, d.Version, d.Upto),
				map[string]string{"stream": sel.stream, "deleted_upto": fmt.Sprint(d.Upto)})
		}
	}
	if err := n.resolveStart(sel); err != nil {
		return toStatus(n.noteCorruption(err))
	}
	end := n.proc.NextOffset()
	if sel.to != 0 {
		end = min(end, sel.to)
	}
	r := &reader{n: n, sel: sel, m: n.metrics.read, budget: n.newSendBudget(ctx)}
	defer r.budget.done()
	for sel.from < end {
		if err := r.send(stream, end, end); err != nil {
			return err
		}
	}
	return nil
}

// send reads and sends one message. Filtered reads skip messages with no
// batches; the next message then covers the skipped range too.
func (r *reader) send(stream grpc.ServerStream, end, logEnd uint64) error {
	start := time.Now()
	if err := r.budget.take(stream.Context(), int64(r.sel.maxBytes)); err != nil {
		return status.FromContextError(err).Err()
	}
	buf, next, err := r.next(end)
	if err != nil {
		// DataLoss for the reader (the SDK resumes on another node); a
		// damaged sealed segment is repaired from a peer (repair.go).
		return toStatus(r.n.noteCorruption(err))
	}
	if r.sel.decoded {
		return r.sendDecoded(stream, buf, next, end, logEnd, start)
	}
	if next <= r.sel.from {
		put(buf)
		return toStatus(fmt.Errorf("read made no progress at offset %d", r.sel.from))
	}
	r.sel.from = next
	if len(*buf) == 0 && next < end {
		put(buf)
		r.budget.skip()
		return nil
	}
	events, size := batchEvents(*buf), len(*buf)
	err = r.sendMsg(stream, &pb.ReadResponse{Batches: *buf, NextOffset: next, LogNextOffset: logEnd}, buf)
	r.m.sentEvents(events, size, start, err)
	return err
}

// grpcFrameBytes is gRPC's length prefix in front of every message.
const grpcFrameBytes = 5

// sendMsg sends msg, whose bytes alias buf, holding the stream's budget to
// what gRPC holds of it: the message is budgeted at its encoded size until
// gRPC has freed the encoding (sendBudget.handOff, codec.go), and buf goes
// back to the pool as soon as the codec has encoded it. The stream's next
// message is read only once this one has left (sendBudget.take), so a
// stalled client's stream holds this one message and nothing else.
func (r *reader) sendMsg(stream grpc.ServerStream, msg *pb.ReadResponse, buf *[]byte) error {
	size := int64(proto.Size(msg)) + grpcFrameBytes
	if err := r.budget.resize(stream.Context(), size); err != nil {
		put(buf)
		return status.FromContextError(err).Err()
	}
	m := r.budget.handOff()
	r.budget.sending(true)
	err := r.n.codec.sendReleasing(stream, msg, func() { put(buf) }, m.release)
	r.budget.sending(false)
	return err
}

// batchEvents counts the records of CRC-checked batches. An unfiltered
// read's first batch counts whole even when it starts before the
// requested offset.
func batchEvents(batches []byte) int {
	events := 0
	for rest := batches; len(rest) > 0; {
		h, err := record.ParseHeader(rest)
		if err != nil || h.Size() > len(rest) {
			break // checked by the reader already; never happens
		}
		events += int(h.RecordCount)
		rest = rest[h.Size():]
	}
	return events
}

func (s *service) ListStreams(ctx context.Context, req *pb.ListStreamsRequest) (*pb.ListStreamsResponse, error) {
	limit := int(req.Limit)
	if limit <= 0 || limit > 1000 {
		limit = 1000
	}
	list, more := s.n.proc.ListStreams(req.Prefix, req.After, limit)
	resp := &pb.ListStreamsResponse{}
	for _, e := range list {
		resp.Streams = append(resp.Streams, &pb.StreamInfo{Name: e.Name, Version: e.Version,
			FirstOffset: e.FirstOffset, LastOffset: e.LastOffset, LastTimestampUnixNano: e.LastTimestamp})
	}
	if more && len(list) > 0 {
		resp.NextAfter = list[len(list)-1].Name
	}
	return resp, nil
}

// acquireReadStream counts one Read or Subscribe stream against
// Config.MaxReadStreams and, for a call with a bearer token, against
// Config.MaxStreamsPerToken: beyond either a new one is refused at once
// (ResourceExhausted), so stalled readers cannot take the node's streams,
// and one token cannot take them all. The caller calls release when it
// ends.
func (n *Node) acquireReadStream(ctx context.Context) (release func(), err error) {
	if n.readStreams.Add(1) > int64(n.cfg.MaxReadStreams) {
		n.readStreams.Add(-1)
		return nil, status.Errorf(codes.ResourceExhausted, "node %s serves %d Read and Subscribe streams already (max-read-streams); retry later or on another node",
			n.cfg.NodeID, n.cfg.MaxReadStreams)
	}
	uncount, err := n.tokenStreams.acquire(ctx, n.cfg.MaxStreamsPerToken, "Read and Subscribe streams", n.cfg.NodeID)
	if err != nil {
		n.readStreams.Add(-1)
		return nil, err
	}
	return func() {
		uncount()
		n.readStreams.Add(-1)
	}, nil
}

// tokenCounts counts one kind of stream per bearer token name.
type tokenCounts struct {
	sync.Mutex
	n map[string]int
}

// acquire counts one stream of the call's token (none without a token,
// or with max 0), refusing it (ResourceExhausted) beyond max; release
// uncounts it.
func (ts *tokenCounts) acquire(ctx context.Context, max int, what, node string) (release func(), err error) {
	token := tokenName(ctx)
	if token == "" || max == 0 {
		return func() {}, nil
	}
	ts.Lock()
	if ts.n[token] >= max {
		ts.Unlock()
		return nil, status.Errorf(codes.ResourceExhausted, "token %q has %d %s open on node %s already (max-streams-per-token); close some first",
			token, max, what, node)
	}
	if ts.n == nil {
		ts.n = map[string]int{}
	}
	ts.n[token]++
	ts.Unlock()
	return func() {
		ts.Lock()
		if ts.n[token]--; ts.n[token] == 0 {
			delete(ts.n, token)
		}
		ts.Unlock()
	}, nil
}
