package client

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/tsstore/tsstore/proto/tsstorev1"
	"github.com/tsstore/tsstore/record"
)

// memLog is an in-memory log that serves Read and Subscribe the way a
// tsstore node does: unfiltered reads get whole batches; filtered reads get
// thinned batches (span kept, non-matching records dropped, empty batches
// not sent); every message covers [start, next_offset); a subscription
// follows the log and sends heartbeats when caught up. Several fake nodes
// may share one memLog, like replicas of one log.
type memLog struct {
	t  testing.TB
	mu struct {
		sync.Mutex
		batches  []record.Batch
		next     uint64
		streams  map[string]*tsstorev1.StreamInfo
		changed  chan struct{} // closed and replaced on every append
		sentMsgs int           // messages sent, all calls
		empty    int           // zero-batch messages sent
	}
}

// memRec is one event to append: stream and type.
type memRec struct{ stream, typ string }

func newMemLog(t testing.TB) *memLog {
	l := &memLog{t: t}
	l.mu.streams = make(map[string]*tsstorev1.StreamInfo)
	l.mu.changed = make(chan struct{})
	return l
}

// memTime is the commit time of the batch at base.
func memTime(base uint64) int64 { return int64(1_000_000 + 1000*base) }

// add appends one batch holding recs and returns its base offset. Record
// payloads are "stream/version".
func (l *memLog) add(recs ...memRec) uint64 {
	l.t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	base := l.mu.next
	var b record.Builder
	b.Reset(base, base+1, memTime(base), 0)
	for i, mr := range recs {
		off := base + uint64(i)
		si := l.mu.streams[mr.stream]
		if si == nil {
			si = &tsstorev1.StreamInfo{Name: mr.stream, FirstOffset: off}
			l.mu.streams[mr.stream] = si
		}
		si.Version++
		si.LastOffset, si.LastTimestampUnixNano = off, memTime(base)
		r := record.Record{StreamVersion: si.Version, Stream: []byte(mr.stream), Type: []byte(mr.typ),
			Payload: []byte(mr.stream + "/" + strconv.FormatUint(si.Version, 10))}
		if err := b.Add(&r); err != nil {
			l.t.Fatalf("memLog add: %v", err)
		}
	}
	out, err := b.Finish()
	if err != nil {
		l.t.Fatalf("memLog finish: %v", err)
	}
	l.mu.batches = append(l.mu.batches, slices.Clone(out))
	l.mu.next = out.Header().NextOffset()
	close(l.mu.changed)
	l.mu.changed = make(chan struct{})
	return base
}

func (l *memLog) stats() (msgs, empty int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.mu.sentMsgs, l.mu.empty
}

// memServe tunes how a memLog serves one call.
type memServe struct {
	perMsg    int   // batches of the log scanned per message; 0: 2
	sendEmpty bool  // send zero-batch messages for ranges with no match
	limit     int   // messages to send before failing with failErr; 0: none
	failErr   error // returned after limit messages
}

// memSel is a resolved ReadRequest.
type memSel struct {
	from, to uint64
	req      *tsstorev1.ReadRequest
	types    map[string]bool
}

func (s *memSel) filtered() bool {
	return s.req.GetStream() != "" || s.req.GetStreamPrefix() != "" || s.types != nil
}

func (s *memSel) keep(r *record.Record) bool {
	req := s.req
	switch {
	case req.GetStream() != "" && string(r.Stream) != req.GetStream(),
		!strings.HasPrefix(string(r.Stream), req.GetStreamPrefix()),
		s.types != nil && !s.types[string(r.Type)],
		req.GetFromVersion() > 0 && r.StreamVersion < req.GetFromVersion():
		return false
	}
	return r.Offset >= s.from && (s.to == 0 || r.Offset < s.to)
}

// resolveLocked picks the start like the server: from_offset, moved up to
// the first batch at/after from_timestamp and the offset of from_version.
func (l *memLog) resolveLocked(req *tsstorev1.ReadRequest) *memSel {
	s := &memSel{from: req.GetFromOffset(), to: req.GetToOffset(), req: req}
	if len(req.GetEventTypes()) > 0 {
		s.types = make(map[string]bool)
		for _, t := range req.GetEventTypes() {
			s.types[t] = true
		}
	}
	if ts := req.GetFromTimestampUnixNano(); ts != 0 {
		at := l.mu.next
		for _, b := range l.mu.batches {
			if h := b.Header(); h.Timestamp >= ts {
				at = h.BaseOffset
				break
			}
		}
		s.from = max(s.from, at)
	}
	if v := req.GetFromVersion(); v > 1 {
		at := l.mu.next
	find:
		for _, b := range l.mu.batches {
			it := b.Records()
			var r record.Record
			for it.Next(&r) {
				if string(r.Stream) == req.GetStream() && r.StreamVersion >= v {
					at = r.Offset
					break find
				}
			}
		}
		s.from = max(s.from, at)
	}
	return s
}

// serve answers one Read (live: Subscribe) call.
func (l *memLog) serve(ctx context.Context, req *tsstorev1.ReadRequest, live bool, o memServe,
	send func(*tsstorev1.ReadResponse) error) error {
	l.mu.Lock()
	for l.mu.next < req.GetMinNextOffset() { // read-your-writes: wait for the log
		ch := l.mu.changed
		l.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
		l.mu.Lock()
	}
	if !live && req.GetStream() != "" && l.mu.streams[req.GetStream()] == nil {
		l.mu.Unlock()
		return statusErr(l.t, codes.NotFound, tsstorev1.ErrorReason_ERROR_REASON_STREAM_NOT_FOUND,
			map[string]string{"stream": req.GetStream()})
	}
	s := l.resolveLocked(req)
	end := l.mu.next
	if s.to != 0 {
		end = min(end, s.to)
	}
	l.mu.Unlock()
	if o.perMsg == 0 {
		o.perMsg = 2
	}
	sent := 0
	for {
		if !live && s.from >= end {
			return nil
		}
		msg, changed := l.message(s, o.perMsg)
		if msg == nil { // caught up: heartbeat, then wait for the log to grow
			msg = &tsstorev1.ReadResponse{NextOffset: s.from, LogNextOffset: s.from}
		} else if len(msg.Batches) == 0 && !o.sendEmpty && msg.NextOffset < msg.LogNextOffset {
			s.from = msg.NextOffset // skipped: the next message covers this range too
			continue
		}
		if o.limit > 0 && sent == o.limit {
			return o.failErr
		}
		if err := send(msg); err != nil {
			return err
		}
		sent++
		l.count(len(msg.Batches) == 0)
		if msg.NextOffset > s.from || !live {
			s.from = msg.NextOffset
			continue
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (l *memLog) count(empty bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.mu.sentMsgs++
	if empty {
		l.mu.empty++
	}
}

// message builds the message covering [s.from, next) from up to perMsg
// batches, or returns nil and a channel that closes on the next append
// when s.from is at the log end.
func (l *memLog) message(s *memSel, perMsg int) (*tsstorev1.ReadResponse, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if s.from >= l.mu.next {
		return nil, l.mu.changed
	}
	msg := &tsstorev1.ReadResponse{NextOffset: s.from, LogNextOffset: l.mu.next}
	i, _ := slices.BinarySearchFunc(l.mu.batches, s.from, func(b record.Batch, off uint64) int {
		if b.Header().NextOffset() <= off {
			return -1
		}
		return 1
	})
	for n := 0; i < len(l.mu.batches) && n < perMsg; i, n = i+1, n+1 {
		b := l.mu.batches[i]
		if s.to != 0 && b.Header().BaseOffset >= s.to {
			break
		}
		msg.NextOffset = b.Header().NextOffset()
		if !s.filtered() {
			msg.Batches = append(msg.Batches, b...)
		} else if tb := thin(l.t, b, s); tb != nil {
			msg.Batches = append(msg.Batches, tb...)
		}
	}
	if s.to != 0 {
		msg.NextOffset = min(msg.NextOffset, s.to)
	}
	return msg, l.mu.changed
}

// thin returns b with only the records s keeps, its span unchanged, or nil
// if it keeps none.
func thin(t testing.TB, b record.Batch, s *memSel) record.Batch {
	h := b.Header()
	var bb record.Builder
	bb.Reset(h.BaseOffset, h.RaftIndex, h.Timestamp, h.Attributes)
	it := b.Records()
	var r record.Record
	for it.Next(&r) {
		if s.keep(&r) {
			if err := bb.AddAt(&r, r.Offset-h.BaseOffset); err != nil {
				t.Errorf("thin: %v", err)
				return nil
			}
		}
	}
	if bb.Count() == 0 {
		return nil
	}
	bb.ExtendSpan(uint64(h.LastDelta))
	out, err := bb.Finish()
	if err != nil {
		t.Errorf("thin: %v", err)
		return nil
	}
	return slices.Clone(out)
}

// listStreams pages through the streams like the server.
func (l *memLog) listStreams(req *tsstorev1.ListStreamsRequest, limit int) *tsstorev1.ListStreamsResponse {
	l.mu.Lock()
	defer l.mu.Unlock()
	var names []string
	for name := range l.mu.streams {
		if strings.HasPrefix(name, req.GetPrefix()) && name > req.GetAfter() {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	resp := &tsstorev1.ListStreamsResponse{}
	for _, name := range names[:min(limit, len(names))] {
		resp.Streams = append(resp.Streams, l.mu.streams[name])
	}
	if len(names) > limit {
		resp.NextAfter = names[limit-1]
	}
	return resp
}

// memEvent is one stored event, for expectations.
type memEvent struct {
	offset  uint64
	stream  string
	typ     string
	version uint64
}

// events returns the stored events keep selects, in offset order.
func (l *memLog) events(keep func(memEvent) bool) []memEvent {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []memEvent
	for _, b := range l.mu.batches {
		it := b.Records()
		var r record.Record
		for it.Next(&r) {
			e := memEvent{r.Offset, string(r.Stream), string(r.Type), r.StreamVersion}
			if keep(e) {
				out = append(out, e)
			}
		}
	}
	return out
}

// fillLog appends n batches over streams run/1, run/2 and other; every
// third batch holds only "other" events.
func fillLog(l *memLog, n int) {
	for i := range n {
		switch i % 3 {
		case 0:
			l.add(memRec{"run/1", "Started"}, memRec{"other", "X"})
		case 1:
			l.add(memRec{"other", "X"}, memRec{"other", "Y"}, memRec{"other", "X"})
		case 2:
			l.add(memRec{"run/2", "Step"}, memRec{"run/1", "Step"}, memRec{"run/1", "Done"})
		}
	}
}

// bases returns the base offset of every batch.
func (l *memLog) bases() []uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []uint64
	for _, b := range l.mu.batches {
		out = append(out, b.Header().BaseOffset)
	}
	return out
}

func (l *memLog) nextOffset() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.mu.next
}

func (l *memLog) stream(name string) *tsstorev1.StreamInfo {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.mu.streams[name]
}
