package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tsstore/tsstore/proto/tsstorev1"
	"github.com/tsstore/tsstore/record"
)

// batchFunc receives one verified batch that continues the log; lo is the
// first offset in it the caller has not seen, and records at or after stop
// must not be delivered (a check failed there and the read ends with an
// error after fn returns). It returns false to stop.
type batchFunc func(b record.Batch, lo, stop uint64) (bool, error)

// errStreamEnded: a subscription stream ended without an error, which a
// server never does; it is resumed like a node failure.
var errStreamEnded = fmt.Errorf("%w: subscription stream ended by the server", ErrProtocol)

// read runs a Read stream (a Subscribe stream if live) from from, passes
// each batch to fn, and when the stream fails in a way another node may not
// (node down, SLOW_CONSUMER) resumes it from the cursor's token. It returns
// when the stream ends, fn stops, or on an error.
func (c *Client) read(ctx context.Context, from uint64, o *readOptions, live bool, fn batchFunc) error {
	if err := o.validate(live); err != nil {
		return err
	}
	if o.to != 0 && from >= o.to {
		return nil
	}
	if !live && !o.local {
		// Replay and ReadBatches are never silently short (Local).
		o.linearizable = true
	}
	cur := newCursor(from, o)
	minNext := o.minNext
	if !o.linearizable {
		minNext = max(minNext, c.minNextOffset())
	}
	pause := c.cfg.RetryBackoff
	failures := 0
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, err := c.pick(false)
		if err != nil {
			return err
		}
		req := o.request(from, live)
		if cur.positioned {
			// Resume: the token replaces the original selection.
			req.FromOffset, req.FromTimestampUnixNano, req.FromVersion = cur.next, 0, 0
			if cur.next > from {
				// Offsets below the token exist: never resume on a node
				// whose log is shorter than what was already covered.
				minNext = max(minNext, cur.next)
			}
		}
		req.MinNextOffset = minNext
		before, wasPositioned := cur.next, cur.positioned
		done, err := c.readOnce(ctx, n, req, live, cur, o.onProgress, fn)
		if done {
			return err
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%w (last attempt: %w)", ctx.Err(), fromStatus(err))
		}
		slow := isSlowConsumer(err)
		// DataLoss: the node found the bytes damaged on its disk and
		// refused to serve them; another replica holds the same log.
		damaged := status.Code(err) == codes.DataLoss
		if !slow && !damaged && !retryable(ctx, err) && !errors.Is(err, errStreamEnded) {
			return fromStatus(err)
		}
		c.failed(n.addr, err)
		if cur.next > before || cur.positioned != wasPositioned {
			failures, pause = 0, c.cfg.RetryBackoff // the budget is for consecutive failures
		}
		if failures++; failures > c.cfg.MaxRetries {
			return fromStatus(err)
		}
		c.noteResume(slow)
		if o.onResume != nil {
			token := from
			if cur.positioned {
				token = cur.next
			}
			o.onResume(Resume{Node: n.addr, Token: token, Err: fromStatus(err), Attempt: failures})
		}
		if err := sleep(ctx, jitter(pause)); err != nil {
			return err
		}
		pause = min(2*pause, c.cfg.MaxRetryBackoff)
	}
}

// readOnce runs one stream. done means read must return err as is;
// otherwise err is a stream failure that may be resumed.
func (c *Client) readOnce(ctx context.Context, n *node, req *tsstorev1.ReadRequest, live bool,
	cur *cursor, onProgress func(Progress), fn batchFunc) (done bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // closes the stream however readOnce returns
	var stream grpc.ServerStreamingClient[tsstorev1.ReadResponse]
	if live {
		stream, err = n.api.Subscribe(ctx, req)
	} else {
		stream, err = n.api.Read(ctx, req)
	}
	if err != nil {
		return false, err
	}
	cur.fresh = true
	for {
		resp, err := stream.Recv()
		switch {
		case errors.Is(err, io.EOF) && live:
			return false, errStreamEnded
		case errors.Is(err, io.EOF):
			return true, nil
		case err != nil:
			return false, err
		}
		if stop, err := cur.feed(resp, fn); stop || err != nil {
			return true, err
		}
		if onProgress != nil {
			onProgress(Progress{NextOffset: cur.next, LogNextOffset: resp.GetLogNextOffset()})
		}
	}
}

// isSlowConsumer reports whether err is the server cutting off a
// subscriber that fell too far behind.
func isSlowConsumer(err error) bool {
	ei, ok := errorInfo(err)
	return ok && status.Code(err) == codes.ResourceExhausted &&
		ei.GetReason() == tsstorev1.ErrorReason_ERROR_REASON_SLOW_CONSUMER.String()
}

// cursor tracks a read's position in the log across messages and
// reconnects, and checks that what it is fed leaves no gap.
//
// Every message covers [start, next_offset), start being the read's
// position before it: every selected record of that range is in it, and
// every batch lies inside it, except that the first batch after a
// (re)start may begin before start. An unfiltered read must also receive
// every batch: batches chain, and next_offset is where the last one ends.
type cursor struct {
	next uint64 // first offset not yet covered: the resume token
	to   uint64 // exclusive end; 0: none
	// positioned: next is a real position. False until the first message
	// of a FromTime or FromVersion read, whose start the server picks.
	positioned bool
	fresh      bool  // no message received since the stream (re)started
	filtered   bool  // batches are thinned and may leave gaps between them
	minTime    int64 // batches committed before this are skipped (FromTime)
	check      *recordCheck
}

func newCursor(from uint64, o *readOptions) *cursor {
	c := &cursor{
		next:       from,
		to:         o.to,
		positioned: o.fromTime == 0 && o.fromVersion == 0,
		fresh:      true,
		filtered:   o.filtered(),
		minTime:    o.fromTime,
	}
	if c.filtered {
		c.check = newRecordCheck(o)
	}
	return c
}

// feed checks the batches of one message and passes them to fn, then moves
// the cursor to the message's next_offset. stop reports that the read is
// over: fn stopped, the end offset was reached, or err is set.
func (c *cursor) feed(m *tsstorev1.ReadResponse, fn batchFunc) (stop bool, err error) {
	first := c.fresh
	c.fresh = false
	end := m.GetNextOffset()
	if end < c.next {
		return true, fmt.Errorf("%w: next_offset %d is before the read's position %d", ErrProtocol, end, c.next)
	}
	buf := m.GetBatches()
	for i := 0; ; i++ {
		b, rest, err := record.Next(buf)
		if err != nil {
			return true, fmt.Errorf("%w: offset %d: %w", ErrCorruption, c.next, err)
		}
		if b == nil {
			break
		}
		buf = rest
		h := b.Header()
		if err := c.place(h, first && i == 0, end); err != nil {
			return true, err
		}
		if stop, err := c.deliver(b, fn); stop || err != nil {
			return true, err
		}
	}
	if !c.filtered && c.positioned && end > c.next {
		// Nothing is filtered out, so the range after the last batch
		// must be empty.
		return true, &GapError{From: c.next, To: end}
	}
	c.next, c.positioned = end, true
	return c.to != 0 && c.next >= c.to, nil
}

// place checks that a batch with header h may come next in a message whose
// next_offset is end. startOK means it is the first batch after a
// (re)start, which may begin before the position.
func (c *cursor) place(h record.Header, startOK bool, end uint64) error {
	switch {
	case h.NextOffset() <= c.next || (!startOK && h.BaseOffset < c.next):
		return fmt.Errorf("%w: batch [%d, %d] does not continue the log at offset %d",
			ErrProtocol, h.BaseOffset, h.LastOffset(), c.next)
	case !c.filtered && h.BaseOffset > c.next && (c.positioned || !startOK):
		return &GapError{From: c.next, To: h.BaseOffset}
	}
	last := h.NextOffset()
	if c.to != 0 {
		last = min(last, c.to) // the batch holding to may extend past it
	}
	if last > end {
		return fmt.Errorf("%w: batch [%d, %d] lies beyond its message's next_offset %d",
			ErrProtocol, h.BaseOffset, h.LastOffset(), end)
	}
	return nil
}

// deliver passes a placed batch to fn, unless it is older than FromTime,
// and moves the cursor past it.
func (c *cursor) deliver(b record.Batch, fn batchFunc) (stop bool, err error) {
	h := b.Header()
	lo := c.next // before the first message: from, a lower bound of the start
	if h.Timestamp >= c.minTime {
		stopAt, checkErr := uint64(math.MaxUint64), error(nil)
		if c.check != nil && !h.IsControl() {
			stopAt, checkErr = c.check.batch(b, lo, c.to)
		}
		if ok, err := fn(b, lo, stopAt); !ok || err != nil {
			return true, err
		}
		if checkErr != nil {
			return true, checkErr
		}
	}
	c.next, c.positioned = h.NextOffset(), true
	return c.to != 0 && c.next >= c.to, nil
}

// recordCheck verifies the records of a filtered read: each must match the
// filters, and in a stream read versions must increase (by exactly 1 in a
// single-stream read).
type recordCheck struct {
	stream     string
	prefix     string
	types      map[string]bool // nil: any
	minVersion uint64          // records of lower versions are skipped
	exact      bool            // single-stream read: versions step by 1
	want       uint64          // next version expected; 0: not known yet
}

func newRecordCheck(o *readOptions) *recordCheck {
	rc := &recordCheck{stream: o.stream, prefix: o.prefix, minVersion: o.fromVersion}
	if len(o.types) > 0 {
		rc.types = make(map[string]bool, len(o.types))
		for _, t := range o.types {
			rc.types[t] = true
		}
	}
	rc.exact = o.stream != "" && rc.types == nil
	if rc.exact {
		rc.want = o.fromVersion
	}
	return rc
}

// batch checks the records of b that the read delivers (offsets in
// [lo, to), versions from minVersion) and returns the offset of the first
// that fails, with the reason, or MaxUint64 and nil.
func (rc *recordCheck) batch(b record.Batch, lo, to uint64) (uint64, error) {
	it := b.Records()
	var r record.Record
	for it.Next(&r) {
		if r.Offset < lo || (rc.stream != "" && r.StreamVersion < rc.minVersion) {
			continue
		}
		if to != 0 && r.Offset >= to {
			break
		}
		if err := rc.record(&r); err != nil {
			return r.Offset, err
		}
	}
	if err := it.Err(); err != nil {
		return lo, fmt.Errorf("%w: %w", ErrCorruption, err)
	}
	return math.MaxUint64, nil
}

func (rc *recordCheck) record(r *record.Record) error {
	switch {
	case rc.stream != "" && string(r.Stream) != rc.stream,
		rc.prefix != "" && !strings.HasPrefix(string(r.Stream), rc.prefix),
		rc.types != nil && !rc.types[string(r.Type)]:
		return fmt.Errorf("%w: record at offset %d (stream %q, type %q) does not match the read's filter",
			ErrProtocol, r.Offset, r.Stream, r.Type)
	case rc.stream == "":
		return nil
	case rc.want != 0 && r.StreamVersion < rc.want:
		return fmt.Errorf("%w: stream %q: version %d at offset %d after version %d",
			ErrProtocol, rc.stream, r.StreamVersion, r.Offset, rc.want-1)
	case rc.exact && rc.want != 0 && r.StreamVersion > rc.want:
		return &StreamGapError{Stream: rc.stream, FromVersion: rc.want, ToVersion: r.StreamVersion, Offset: r.Offset}
	}
	rc.want = r.StreamVersion + 1
	return nil
}
