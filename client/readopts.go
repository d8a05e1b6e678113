package client

import (
	"errors"
	"fmt"
	"time"

	"github.com/tsstore/tsstore/proto/tsstorev1"
)

// ReadOption modifies a Replay, ReadBatches or Subscribe.
type ReadOption func(*readOptions)

type readOptions struct {
	to           uint64 // exclusive end; 0: the end of the log
	linearizable bool
	local        bool
	minNext      uint64
	maxMsgBytes  uint32

	// Selection of the start and filters, sent as in ReadRequest.
	fromTime    int64 // unix nanoseconds; 0: none
	stream      string
	fromVersion uint64
	prefix      string
	types       []string

	onResume   func(Resume)
	onProgress func(Progress)
}

// To ends the read before offset (exclusive). Without it the read ends at
// the end of the log when the server starts the read (after a resume: when
// the resumed read starts). Subscribe does not accept it.
func To(offset uint64) ReadOption { return func(o *readOptions) { o.to = offset } }

// Linearizable makes the read start only once the serving node has applied
// everything committed when the read was issued, so it observes every
// append that completed before, by any client. It is the default of
// Replay and ReadBatches (see Local); Subscribe takes it as an option.
func Linearizable() ReadOption { return func(o *readOptions) { o.linearizable, o.local = true, false } }

// Local lets a Replay or ReadBatches be served by whichever node answers,
// from what that node has applied: it also works while the cluster has no
// leader, but a lagging node ends the read early (at its own log end).
// Without it, a read observes everything committed when it was issued
// (Linearizable): a lagging or not-serving node hands the read over to
// another, and the read is never silently short.
func Local() ReadOption { return func(o *readOptions) { o.local, o.linearizable = true, false } }

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

// FromTime starts the read at the first event committed at or after t
// (found through the server's time index) instead of at the from offset,
// unless from is later. Events committed before t are never delivered. A
// zero t, or one at or before the Unix epoch, selects nothing.
func FromTime(t time.Time) ReadOption {
	return func(o *readOptions) {
		o.fromTime = 0
		if !t.IsZero() && t.UnixNano() > 0 {
			o.fromTime = t.UnixNano()
		}
	}
}

// Stream reads only the events of one stream, served from the server's
// per-stream index, so the cost grows with the stream rather than the log.
// Without EventTypes such a read is a single-stream read: the client also
// checks that StreamVersion grows by exactly 1 from event to event (a
// *StreamGapError otherwise). A Replay of a stream with no events fails with
// ErrStreamNotFound; a Subscribe waits for its first event.
func Stream(name string) ReadOption { return func(o *readOptions) { o.stream = name } }

// FromVersion, with Stream, starts at the event with this 1-based stream
// version (the server translates it to an offset); pass 0 as from. If from
// is also set, the later of the two applies. Events of lower versions are
// never delivered, and in a single-stream read the first event delivered
// must have version v.
func FromVersion(v uint64) ReadOption { return func(o *readOptions) { o.fromVersion = v } }

// StreamPrefix reads only the events of streams whose name starts with p.
func StreamPrefix(p string) ReadOption { return func(o *readOptions) { o.prefix = p } }

// EventTypes reads only the events of these types (any of them). Repeated
// uses add to the set.
func EventTypes(types ...string) ReadOption {
	return func(o *readOptions) { o.types = append(o.types, types...) }
}

// OnResume calls fn each time the read loses its stream (node failure,
// SLOW_CONSUMER, ...) and is about to resume it on another node, before the
// backoff pause. fn runs on the goroutine iterating the read and must not
// block for long.
func OnResume(fn func(Resume)) ReadOption { return func(o *readOptions) { o.onResume = fn } }

// OnProgress calls fn after the events of each response message have been
// yielded, heartbeats included. Progress.NextOffset is the read's resume
// token at that point. fn runs on the goroutine iterating the read.
func OnProgress(fn func(Progress)) ReadOption { return func(o *readOptions) { o.onProgress = fn } }

// Resume describes one resumption of a Replay, ReadBatches or Subscribe.
type Resume struct {
	// Node is the API address of the node whose stream failed.
	Node string
	// Token is the from_offset of the resumed request: the offset after the
	// last batch span or message the read covered. Before the first message
	// the original request is sent again; Token is then its from offset.
	Token uint64
	// Err is why the stream failed. errors.Is(Err, ErrSlowConsumer) when
	// the server cut off a subscriber that fell too far behind.
	Err error
	// Attempt counts consecutive failures without progress, from 1. The
	// read gives up when it exceeds Config.MaxRetries.
	Attempt int
}

// Progress is a read's position after one response message.
type Progress struct {
	// NextOffset is the resume token: every selected event below it has
	// been delivered. A read restarted with from = NextOffset (and the same
	// filters, without FromTime or FromVersion) continues without gap or
	// duplicate.
	NextOffset uint64
	// LogNextOffset is the serving node's log end when it sent the message;
	// 0 if the server did not say.
	LogNextOffset uint64
}

// CaughtUp reports whether the read had reached the serving node's log end.
func (p Progress) CaughtUp() bool { return p.NextOffset >= p.LogNextOffset }

func readOpts(opts []ReadOption) readOptions {
	var o readOptions
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// validate rejects option combinations the server would reject too.
func (o *readOptions) validate(live bool) error {
	switch {
	case o.fromVersion != 0 && o.stream == "":
		return fmt.Errorf("client: FromVersion(%d) needs Stream", o.fromVersion)
	case live && o.to != 0:
		return errors.New("client: a subscription has no end: To does not apply to Subscribe")
	}
	return nil
}

// filtered reports whether the server thins batches for this read.
func (o *readOptions) filtered() bool {
	return o.stream != "" || o.prefix != "" || len(o.types) > 0
}

// request returns the request that starts the read at from with the
// original selection (FromTime, FromVersion). live requests have no end.
func (o *readOptions) request(from uint64, live bool) *tsstorev1.ReadRequest {
	req := &tsstorev1.ReadRequest{
		FromOffset:            from,
		MaxMessageBytes:       o.maxMsgBytes,
		FromTimestampUnixNano: o.fromTime,
		Stream:                o.stream,
		FromVersion:           o.fromVersion,
		StreamPrefix:          o.prefix,
		EventTypes:            o.types,
	}
	if !live {
		req.ToOffset = o.to
	}
	if o.linearizable {
		req.Consistency = tsstorev1.Consistency_CONSISTENCY_LINEARIZABLE
	}
	return req
}
