package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"math"
	"time"

	"github.com/tsstore/tsstore/proto/tsstorev1"
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

// ReadOption modifies a Replay or ReadBatches.
type ReadOption func(*readOptions)

type readOptions struct {
	to           uint64 // exclusive end; 0: the end of the log
	linearizable bool
	minNext      uint64
	maxMsgBytes  uint32
}

// To ends the read before offset (exclusive). Without it the read ends at
// the end of the log when the server starts the read (after a resume: when
// the resumed read starts).
func To(offset uint64) ReadOption { return func(o *readOptions) { o.to = offset } }

// Linearizable makes the read start only once the serving node has applied
// everything committed when the read was issued, so it observes every
// append that completed before, by any client.
func Linearizable() ReadOption { return func(o *readOptions) { o.linearizable = true } }

// MinNextOffset makes a local read wait (up to ctx's deadline) until the
// serving node holds offsets below n. The client already applies this for
// its own appends (read-your-writes); use it to pass a position learned
// elsewhere.
func MinNextOffset(n uint64) ReadOption {
	return func(o *readOptions) { o.minNext = max(o.minNext, n) }
}

// MaxMessageBytes caps the bytes per response message; 0 lets the server
// choose. A batch larger than the cap is still sent whole.
func MaxMessageBytes(n uint32) ReadOption { return func(o *readOptions) { o.maxMsgBytes = n } }

func readOpts(opts []ReadOption) readOptions {
	var o readOptions
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// Replay streams the events at offsets [from, To) in offset order. Records
// of control batches are not events and are skipped. Offsets the log does
// not hold (compacted, filtered) are skipped; offsets that are missing
// although the log should hold them end the iteration with a *GapError.
//
// If the serving node fails, Replay resumes on another node right after the
// last batch it delivered, without gaps or duplicates. Any error ends the
// iteration: it is yielded once, with a zero RecordedEvent. Breaking out
// of the loop or cancelling ctx closes the stream.
//
//	for ev, err := range c.Replay(ctx, 0) {
//		if err != nil {
//			return err
//		}
//		handle(ev)
//	}
func (c *Client) Replay(ctx context.Context, from uint64, opts ...ReadOption) iter.Seq2[RecordedEvent, error] {
	o := readOpts(opts)
	return func(yield func(RecordedEvent, error) bool) {
		d := newDeliverer(o.to, yield)
		if err := c.read(ctx, from, o, d.batch); err != nil {
			yield(RecordedEvent{}, err)
		}
	}
}

// ReadBatches streams the raw record batches that cover offsets [from, To),
// checked for integrity and continuity like Replay (and resumed the same
// way). The first batch may start before from and the last may end at or
// after To; the caller skips those records. A yielded batch aliases a
// receive buffer and is valid only until the next iteration step; copy it
// to keep it.
func (c *Client) ReadBatches(ctx context.Context, from uint64, opts ...ReadOption) iter.Seq2[record.Batch, error] {
	o := readOpts(opts)
	return func(yield func(record.Batch, error) bool) {
		err := c.read(ctx, from, o, func(b record.Batch, _ uint64) (bool, error) {
			return yield(b, nil), nil
		})
		if err != nil {
			yield(nil, err)
		}
	}
}

// batchFunc receives one verified batch that continues the log, and lo, the
// first offset in it the caller has not seen. It returns false to stop.
type batchFunc func(b record.Batch, lo uint64) (bool, error)

// read runs a Read stream from from, passes each batch to fn, and on a
// retryable stream failure resumes on another node where the last delivered
// batch ended. It returns when the stream ends, fn stops, or on an error.
func (c *Client) read(ctx context.Context, from uint64, o readOptions, fn batchFunc) error {
	if o.to != 0 && from >= o.to {
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // closes the stream however read returns

	cur := cursor{next: from, to: o.to}
	consistency := tsstorev1.Consistency_CONSISTENCY_LOCAL
	minNext := o.minNext
	if o.linearizable {
		consistency = tsstorev1.Consistency_CONSISTENCY_LINEARIZABLE
	} else {
		minNext = max(minNext, c.minNextOffset())
	}
	pause := c.cfg.RetryBackoff
	failures := 0
	for {
		n, err := c.pick(false)
		if err != nil {
			return err
		}
		if cur.next > from {
			// Offsets below cur.next exist: never resume on a node that
			// has not caught up to what was already delivered.
			minNext = max(minNext, cur.next)
		}
		req := &tsstorev1.ReadRequest{
			FromOffset:      cur.next,
			ToOffset:        o.to,
			Consistency:     consistency,
			MinNextOffset:   minNext,
			MaxMessageBytes: o.maxMsgBytes,
		}
		before := cur.next
		done, err := c.readOnce(ctx, n, req, &cur, fn)
		if done || err == nil {
			return err
		}
		c.failed(n.addr, err)
		if !retryable(ctx, err) {
			return fromStatus(err)
		}
		if cur.next > before { // progress: the budget is for consecutive failures
			failures, pause = 0, c.cfg.RetryBackoff
		}
		if failures++; failures > c.cfg.MaxRetries {
			return fromStatus(err)
		}
		if err := sleep(ctx, jitter(pause)); err != nil {
			return err
		}
		pause = min(2*pause, c.cfg.MaxRetryBackoff)
	}
}

// readOnce runs one Read stream. done means read must return err as is;
// otherwise err is a stream failure that may be retried.
func (c *Client) readOnce(ctx context.Context, n *node, req *tsstorev1.ReadRequest, cur *cursor, fn batchFunc) (done bool, err error) {
	stream, err := n.api.Read(ctx, req)
	if err != nil {
		return false, err
	}
	cur.fresh = true
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return true, nil
		}
		if err != nil {
			return false, err
		}
		if stop, err := cur.feed(resp.GetBatches(), fn); stop || err != nil {
			return true, err
		}
	}
}

// cursor tracks a read's position in the log across messages and
// reconnects, and checks that the batches it is fed leave no gap.
type cursor struct {
	next  uint64 // first offset not covered by a batch passed on
	to    uint64 // exclusive end; 0: none
	fresh bool   // no batch seen since the stream (re)started
}

// feed splits buf (a ReadResponse.batches) into batches, checks each, and
// passes it to fn. The first batch after a (re)start must cover next; every
// later one must start where the previous ended. stop reports that the
// read is over: fn stopped, the end offset was reached, or err is set.
func (c *cursor) feed(buf []byte, fn batchFunc) (stop bool, err error) {
	for {
		b, rest, err := record.Next(buf)
		if err != nil {
			return true, fmt.Errorf("%w: offset %d: %w", ErrCorruption, c.next, err)
		}
		if b == nil {
			return false, nil
		}
		buf = rest
		h := b.Header()
		switch {
		case h.BaseOffset > c.next:
			return true, &GapError{From: c.next, To: h.BaseOffset}
		case h.NextOffset() <= c.next || (!c.fresh && h.BaseOffset != c.next):
			return true, fmt.Errorf("%w: batch [%d, %d] does not continue the log at offset %d",
				ErrProtocol, h.BaseOffset, h.LastOffset(), c.next)
		}
		c.fresh = false
		if ok, err := fn(b, c.next); !ok || err != nil {
			return true, err
		}
		c.next = h.NextOffset()
		if c.to != 0 && c.next >= c.to {
			return true, nil
		}
	}
}

// deliverer decodes batches into RecordedEvents for Replay.
type deliverer struct {
	hi    uint64 // exclusive end offset
	yield func(RecordedEvent, error) bool
	names map[string]string // interned stream, type and producer names
}

// maxInterned bounds the name cache of one replay.
const maxInterned = 4096

func newDeliverer(to uint64, yield func(RecordedEvent, error) bool) *deliverer {
	hi := to
	if hi == 0 {
		hi = math.MaxUint64
	}
	return &deliverer{hi: hi, yield: yield, names: make(map[string]string)}
}

// batch yields the records of b at offsets [lo, hi). In a complete batch it
// checks that record offsets are contiguous.
func (d *deliverer) batch(b record.Batch, lo uint64) (bool, error) {
	h := b.Header()
	it := b.Records()
	want := h.BaseOffset // next offset a complete batch must hold
	var r record.Record
	for it.Next(&r) {
		if h.Complete() && r.Offset != want {
			return false, &GapError{From: want, To: r.Offset}
		}
		want = r.Offset + 1
		if r.Offset >= d.hi {
			return true, nil
		}
		if r.Offset < lo || h.IsControl() {
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
