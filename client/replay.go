package client

import (
	"context"
	"fmt"
	"iter"
	"math"
	"time"

	"github.com/tsstore/tsstore/record"
)

// RecordedEvent is one stored event. Its byte slices are its own: they do
// not alias any receive buffer and stay valid after the iteration moves on.
type RecordedEvent struct {
	Offset        uint64 // global offset
	StreamVersion uint64 // 1-based version of Stream after this event; 0: none
	Stream        string
	Type          string
	ProducerID    string // "" for a non-idempotent append
	ProducerSeq   uint64
	Timestamp     time.Time // commit time of the batch, monotonic across the log
	RaftIndex     uint64    // Raft entry that carried the event
	Metadata      []byte
	Payload       []byte
}

// Replay streams the selected events at offsets [from, To) in offset
// order, then ends. Without filters every event is selected; Stream,
// StreamPrefix and EventTypes narrow the selection on the server, and
// FromTime or Stream with FromVersion pick the start. Records of control
// batches are not events and are skipped.
//
// Replay checks that what it receives leaves no gap (see the package doc):
// a violation ends the iteration with a *GapError or *StreamGapError. If
// the serving node fails, Replay resumes on another node from the offset
// after the last batch or message it covered, without gaps or duplicates.
// Any error ends the iteration: it is yielded once, with a zero
// RecordedEvent. Breaking out of the loop or cancelling ctx closes the
// stream.
//
//	for ev, err := range c.Replay(ctx, 0, client.Stream("run/42")) {
//		if err != nil {
//			return err
//		}
//		handle(ev)
//	}
func (c *Client) Replay(ctx context.Context, from uint64, opts ...ReadOption) iter.Seq2[RecordedEvent, error] {
	o := readOpts(opts)
	return func(yield func(RecordedEvent, error) bool) {
		d := newDeliverer(&o, yield)
		if err := c.read(ctx, from, &o, false, d.batch); err != nil {
			yield(RecordedEvent{}, err)
		}
	}
}

// ReadBatches streams the raw record batches that cover the selected
// events at offsets [from, To), checked and resumed like Replay. The first
// batch may start before from (or, with FromVersion, hold lower versions)
// and the last may end at or after To; the caller skips those records. A
// filtered read yields thinned batches (see package record) with gaps
// between them. A yielded batch aliases a receive buffer and is valid only
// until the next iteration step; copy it to keep it.
func (c *Client) ReadBatches(ctx context.Context, from uint64, opts ...ReadOption) iter.Seq2[record.Batch, error] {
	o := readOpts(opts)
	return func(yield func(record.Batch, error) bool) {
		err := c.read(ctx, from, &o, false, func(b record.Batch, _, stop uint64) (bool, error) {
			if stop <= b.Header().LastOffset() {
				return true, nil // the batch fails a check: the read ends with it
			}
			return yield(b, nil), nil
		})
		if err != nil {
			yield(nil, err)
		}
	}
}

// deliverer decodes batches into RecordedEvents for Replay and Subscribe.
type deliverer struct {
	hi         uint64 // exclusive end offset
	minVersion uint64 // with a stream: lower versions are skipped
	yield      func(RecordedEvent, error) bool
	names      map[string]string // interned stream, type and producer names
}

// maxInterned bounds the name cache of one replay.
const maxInterned = 4096

func newDeliverer(o *readOptions, yield func(RecordedEvent, error) bool) *deliverer {
	d := &deliverer{hi: o.to, yield: yield, names: make(map[string]string)}
	if d.hi == 0 {
		d.hi = math.MaxUint64
	}
	if o.stream != "" {
		d.minVersion = o.fromVersion
	}
	return d
}

// batch yields the records of b at offsets [lo, min(hi, stop)). In a
// complete batch it checks that record offsets are contiguous.
func (d *deliverer) batch(b record.Batch, lo, stop uint64) (bool, error) {
	h := b.Header()
	it := b.Records()
	want := h.BaseOffset // next offset a complete batch must hold
	hi := min(d.hi, stop)
	var r record.Record
	for it.Next(&r) {
		if h.Complete() && r.Offset != want {
			return false, &GapError{From: want, To: r.Offset}
		}
		want = r.Offset + 1
		if r.Offset >= hi {
			return true, nil
		}
		if r.Offset < lo || h.IsControl() || r.StreamVersion < d.minVersion {
			continue
		}
		if !d.yield(d.event(h, &r), nil) {
			return false, nil
		}
	}
	if err := it.Err(); err != nil {
		return false, fmt.Errorf("%w: %w", ErrCorruption, err)
	}
	if h.Complete() && want != h.NextOffset() {
		return false, &GapError{From: want, To: h.NextOffset()}
	}
	return true, nil
}

// event copies r out of the receive buffer.
func (d *deliverer) event(h record.Header, r *record.Record) RecordedEvent {
	ev := RecordedEvent{
		Offset:        r.Offset,
		StreamVersion: r.StreamVersion,
		Stream:        d.intern(r.Stream),
		Type:          d.intern(r.Type),
		ProducerID:    d.intern(r.ProducerID),
		ProducerSeq:   r.ProducerSeq,
		Timestamp:     time.Unix(0, h.Timestamp),
		RaftIndex:     h.RaftIndex,
	}
	if n := len(r.Metadata) + len(r.Payload); n > 0 {
		buf := make([]byte, n) // one allocation for both
		copy(buf, r.Metadata)
		copy(buf[len(r.Metadata):], r.Payload)
		if len(r.Metadata) > 0 {
			ev.Metadata = buf[:len(r.Metadata):len(r.Metadata)]
		}
		if len(r.Payload) > 0 {
			ev.Payload = buf[len(r.Metadata):]
		}
	}
	return ev
}

func (d *deliverer) intern(b []byte) string {
	if s, ok := d.names[string(b)]; ok {
		return s
	}
	s := string(b)
	if len(d.names) < maxInterned {
		d.names[s] = s
	}
	return s
}
