package client

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tsstore/tsstore/proto/tsstorev1"
	"github.com/tsstore/tsstore/record"
)

// Event is one event to append.
type Event struct {
	Stream   string // required, e.g. "run/bert-16n-42"
	Type     string // required, e.g. "BatchCompleted"
	Metadata []byte
	Payload  []byte
}

// AppendResult describes a committed append.
type AppendResult struct {
	FirstOffset, LastOffset uint64 // global offsets of the first and last event
	RaftIndex               uint64 // Raft entry that carried the events
	Timestamp               time.Time
	// Duplicate is true when a retry found the append already committed;
	// the offsets are those of the original append.
	Duplicate bool
	// StreamVersions is the version (event count) of each written stream
	// after the append.
	StreamVersions map[string]uint64
}

// ExpectedVersion is an optimistic-concurrency expectation on a stream:
// Any, NoStream, StreamExists, or Exact(n).
type ExpectedVersion int64

// Expectations other than Exact.
const (
	Any          ExpectedVersion = -1 // no check
	NoStream     ExpectedVersion = -2 // the stream must hold no events
	StreamExists ExpectedVersion = -3 // the stream must hold at least one event
)

// Exact expects the stream to hold exactly n events. n must be below 2^63.
func Exact(n uint64) ExpectedVersion {
	if n > math.MaxInt64 {
		return ExpectedVersion(math.MinInt64) // rejected by Append
	}
	return ExpectedVersion(n)
}

func (v ExpectedVersion) proto(stream string) (*tsstorev1.StreamExpectation, error) {
	e := &tsstorev1.StreamExpectation{Stream: stream}
	switch {
	case v == Any:
		e.Kind = tsstorev1.ExpectedVersionKind_EXPECTED_VERSION_KIND_ANY
	case v == NoStream:
		e.Kind = tsstorev1.ExpectedVersionKind_EXPECTED_VERSION_KIND_NO_STREAM
	case v == StreamExists:
		e.Kind = tsstorev1.ExpectedVersionKind_EXPECTED_VERSION_KIND_STREAM_EXISTS
	case v >= 0:
		e.Kind = tsstorev1.ExpectedVersionKind_EXPECTED_VERSION_KIND_EXACT
		e.Version = uint64(v)
	default:
		return nil, fmt.Errorf("client: invalid expected version %d for stream %q", int64(v), stream)
	}
	return e, nil
}

// AppendOption modifies one append.
type AppendOption func(*appendOptions)

type appendOptions struct {
	expect []expectation
	gen    uint64
}

type expectation struct {
	stream string
	v      ExpectedVersion
}

// WithExpectedVersion makes the append conditional on stream's version:
// if the expectation fails nothing is written and the error is a
// *WrongExpectedVersionError.
func WithExpectedVersion(stream string, v ExpectedVersion) AppendOption {
	return func(o *appendOptions) { o.expect = append(o.expect, expectation{stream, v}) }
}

// WithRunGeneration makes the append carry a training run's generation
// (Client.StartRun), overriding the producer's (SetRunGeneration). An
// append to a run's stream must carry the run's current generation, or
// it fails with a *FencedError and writes nothing.
func WithRunGeneration(gen uint64) AppendOption {
	return func(o *appendOptions) { o.gen = gen }
}

// Producer appends events with idempotent retries. It numbers events with
// a producer sequence (the first event is 1) and sends one append at a
// time, in call order; a retried append carries the same sequence, so the
// server commits it at most once and answers a retry with the original
// offsets. Producer is safe for concurrent use; calls are serialized.
type Producer struct {
	c   *Client
	id  string
	gen atomic.Uint64 // run generation of its appends (SetRunGeneration)

	mu struct {
		sync.Mutex
		next uint64 // sequence of the next new event
		// inDoubt is an append that failed without a definite answer: it
		// may have committed. It is settled before any different append.
		inDoubt *tsstorev1.AppendRequest
	}
}

// NewProducer returns a producer with the given id, starting at sequence 1.
// An empty id picks a random unique one. Two live producers must never share
// an id; an id reused after a restart must continue its sequence (see
// ResumeProducer).
func (c *Client) NewProducer(id string) *Producer {
	return c.ResumeProducer(id, 1)
}

// ResumeProducer returns a producer that continues an earlier producer with
// the same id at sequence next (its last committed sequence + 1).
func (c *Client) ResumeProducer(id string, next uint64) *Producer {
	if id == "" {
		id = randomProducerID()
	}
	p := &Producer{c: c, id: id}
	p.mu.next = max(next, 1)
	return p
}

func randomProducerID() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "unknown"
	}
	var b [8]byte
	_, _ = rand.Read(b[:]) // never fails on supported platforms
	id := fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b[:]))
	if len(id) > 255 { // record.MaxNameLen: keep the random tail
		id = id[len(id)-255:]
	}
	return id
}

// SetRunGeneration makes the producer's later appends carry a training
// run's generation, as returned by Client.StartRun: once a newer attempt
// starts the run, this producer's appends to it fail with *FencedError.
func (p *Producer) SetRunGeneration(gen uint64) { p.gen.Store(gen) }

// ID returns the producer id.
func (p *Producer) ID() string { return p.id }

// NextSeq returns the sequence the next new event will get.
func (p *Producer) NextSeq() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mu.next
}

// Append commits events atomically through the client's default producer,
// created by New. Calls are serialized by that producer (one append in
// flight per Client); use a Producer per goroutine for parallel appends.
func (c *Client) Append(ctx context.Context, events ...Event) (AppendResult, error) {
	return c.def.AppendWith(ctx, events)
}

// AppendWith is Append with options.
func (c *Client) AppendWith(ctx context.Context, events []Event, opts ...AppendOption) (AppendResult, error) {
	return c.def.AppendWith(ctx, events, opts...)
}

// Append commits events atomically (all or none). Event i gets producer
// sequence NextSeq()+i; the sequence advances only when the append commits.
//
// On a definite failure (e.g. *WrongExpectedVersionError, ErrEventTooLarge)
// nothing was written. On an ambiguous one (retries exhausted, context
// done) the append may have committed; the producer then keeps it "in
// doubt": calling Append again with the same events retries it with the
// same sequence, and calling Append with different events first re-sends
// the in-doubt append to settle it (so it is committed exactly once) before
// sending the new one.
func (p *Producer) Append(ctx context.Context, events ...Event) (AppendResult, error) {
	return p.AppendWith(ctx, events)
}

// AppendWith is Append with options such as WithExpectedVersion.
func (p *Producer) AppendWith(ctx context.Context, events []Event, opts ...AppendOption) (AppendResult, error) {
	req, err := p.request(events, opts)
	if err != nil {
		return AppendResult{}, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	retry := false // req is the in-doubt append again: an earlier call's attempt reached a server
	if d := p.mu.inDoubt; d != nil {
		req.ProducerSeq = d.ProducerSeq
		if retry = proto.Equal(req, d); !retry {
			if err := p.settleLocked(ctx); err != nil {
				return AppendResult{}, err
			}
		}
	}
	req.ProducerSeq = p.mu.next
	resp, attempts, err := p.send(ctx, req)
	if retry && attempts > 0 {
		attempts++
	}
	return p.finishLocked(req, resp, attempts, err)
}

// settleLocked re-sends the in-doubt append until its outcome is known:
// committed (the sequence advances) or definitely not (it is dropped).
func (p *Producer) settleLocked(ctx context.Context) error {
	d := p.mu.inDoubt
	resp, attempts, err := p.send(ctx, d)
	if attempts > 0 {
		attempts++ // d reached a server before this call
	}
	if _, err := p.finishLocked(d, resp, attempts, err); err != nil && p.mu.inDoubt != nil {
		return fmt.Errorf("client: producer %s: earlier append at seq %d still in doubt: %w", p.id, d.GetProducerSeq(), err)
	}
	return nil
}

// finishLocked applies the outcome of sending req: advance the sequence if
// it committed, remember it if the outcome is unknown. attempts > 1 means
// the append reached a server before the attempt that produced this outcome.
func (p *Producer) finishLocked(req *tsstorev1.AppendRequest, resp *tsstorev1.AppendResponse, attempts int, err error) (AppendResult, error) {
	n := uint64(len(req.GetEvents()))
	switch {
	case err == nil:
		p.mu.next = req.GetProducerSeq() + n
		p.mu.inDoubt = nil
		p.c.noteAppended(resp.GetLastOffset())
		return result(resp), nil
	case attempts > 1 && errors.Is(err, ErrDuplicateSequence):
		// An earlier attempt committed and has since left the dedup window.
		p.mu.next = req.GetProducerSeq() + n
		p.mu.inDoubt = nil
	case attempts == 0:
		// Never sent: an in-doubt append stays in doubt.
	case !MayHaveCommitted(err) && (attempts == 1 || settlesEarlier(err)):
		// A definite answer: nothing was written, by this attempt or, for
		// an answer decided after the duplicate check, any earlier one.
		p.mu.inDoubt = nil
	case !MayHaveCommitted(err):
		// A definite refusal of a retry that says nothing of the earlier
		// attempts (DISK_FULL before proposing, say): one of them may have
		// committed, so the append stays in doubt and the caller is told.
		p.mu.inDoubt = proto.CloneOf(req)
		return AppendResult{}, &EarlierAttemptError{Seq: req.GetProducerSeq(), Err: err}
	default:
		p.mu.inDoubt = proto.CloneOf(req) // the caller may reuse its buffers
	}
	return AppendResult{}, err
}

// settlesEarlier reports whether a definite error, answered to a retry,
// also means that no earlier attempt of the append committed. Errors the
// FSM decides when it applies an entry do (it checks duplicates first, so
// a committed earlier attempt would have been answered as a duplicate), and
// so do refusals that depend only on the request's bytes (the earlier
// attempt, the same bytes, was refused alike). Refusals that depend on the
// node's state at the time (a full disk, budgets, credentials) do not.
func settlesEarlier(err error) bool {
	for _, e := range []error{ErrSequenceGap, ErrWrongExpectedVersion, ErrFenced, ErrInvalidEvent, ErrEventTooLarge, ErrRequestTooLarge} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// EarlierAttemptError: a retry of an append was refused in a way that says
// nothing about its earlier attempts (for instance DISK_FULL before the
// leader proposed it), and one of those reached a server, so the append may
// have committed. The producer keeps it in doubt: call Append again with
// the same events to learn its outcome. MayHaveCommitted reports true.
type EarlierAttemptError struct {
	Seq uint64
	Err error
}

func (e *EarlierAttemptError) Error() string {
	return fmt.Sprintf("client: append at seq %d refused on a retry, and an earlier attempt may have committed (retry it with the same events): %v", e.Seq, e.Err)
}
func (e *EarlierAttemptError) Unwrap() error { return e.Err }

// MayHaveCommitted reports whether a failed append may still have been
// committed: only definite rejections (invalid, precondition, auth,
// too large, ...) are known not to have been; a timeout, a cancelled
// context or a lost connection leave the outcome unknown. Retrying the
// same Producer call is the safe way to learn it.
func MayHaveCommitted(err error) bool {
	if errors.Is(err, ErrUnreachable) {
		return false
	}
	var earlier *EarlierAttemptError
	if errors.As(err, &earlier) {
		return true
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrClosed) {
		return true
	}
	switch status.Code(err) {
	case codes.InvalidArgument, codes.FailedPrecondition, codes.OutOfRange, codes.AlreadyExists,
		codes.NotFound, codes.PermissionDenied, codes.Unauthenticated, codes.Unimplemented,
		codes.ResourceExhausted:
		return false
	}
	return true
}

func (p *Producer) request(events []Event, opts []AppendOption) (*tsstorev1.AppendRequest, error) {
	if len(events) == 0 {
		return nil, fmt.Errorf("%w: no events", ErrInvalidEvent)
	}
	var o appendOptions
	for _, opt := range opts {
		opt(&o)
	}
	gen := o.gen
	if gen == 0 {
		gen = p.gen.Load()
	}
	req := &tsstorev1.AppendRequest{ProducerId: p.id, Events: make([]*tsstorev1.Event, len(events)), RunGeneration: gen}
	for i, e := range events {
		req.Events[i] = &tsstorev1.Event{Stream: e.Stream, Type: e.Type, Metadata: e.Metadata, Payload: e.Payload}
	}
	for _, e := range o.expect {
		pe, err := e.v.proto(e.stream)
		if err != nil {
			return nil, err
		}
		req.Expectations = append(req.Expectations, pe)
	}
	sealRequest(req)
	return req, nil
}

// send delivers req, preferring the leader and retrying on other nodes. It
// returns how many times the append itself was sent.
func (p *Producer) send(ctx context.Context, req *tsstorev1.AppendRequest) (*tsstorev1.AppendResponse, int, error) {
	var resp *tsstorev1.AppendResponse
	attempts := 0
	err := p.c.call(ctx, func(ctx context.Context, avoid string) (string, error) {
		n, err := p.c.leaderNode(ctx, avoid)
		if n == nil {
			return "", err
		}
		if err != nil {
			return n.addr, err
		}
		attempts++
		resp, err = p.c.appendTo(ctx, n, req)
		return n.addr, err
	})
	return resp, attempts, err
}

func result(resp *tsstorev1.AppendResponse) AppendResult {
	r := AppendResult{
		FirstOffset: resp.GetFirstOffset(),
		LastOffset:  resp.GetLastOffset(),
		RaftIndex:   resp.GetRaftIndex(),
		Timestamp:   time.Unix(0, resp.GetTimestampUnixNano()),
		Duplicate:   resp.GetDuplicate(),
	}
	if sv := resp.GetStreamVersions(); len(sv) > 0 {
		r.StreamVersions = make(map[string]uint64, len(sv))
		for _, v := range sv {
			r.StreamVersions[v.GetStream()] = v.GetVersion()
		}
	}
	return r
}

// sealRequest sets the request's end-to-end checksum over its events as
// they are sent (record.AddEvent): the leader refuses the request if the
// events it received differ, and every replica checks the same sum before
// it writes them.
func sealRequest(req *tsstorev1.AppendRequest) {
	var sum uint32
	for _, e := range req.Events {
		sum = record.AddEvent(sum, e.Stream, e.Type, e.Metadata, e.Payload)
	}
	req.EventsCrc32C = &sum
}
