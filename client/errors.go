package client

import (
	"errors"
	"fmt"
	"strconv"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/status"

	"github.com/tsstore/tsstore/proto/tsstorev1"
)

// ErrorDomain is the google.rpc.ErrorInfo domain of tsstore errors.
const ErrorDomain = "tsstore.io"

// Errors returned by the client. Check them with errors.Is. Errors that came
// from a server also wrap the gRPC status, so status.Code and
// status.FromError still work on them. Several have a typed form carrying
// the details, for errors.As:
//
//	ErrSequenceGap          *SequenceGapError
//	ErrDuplicateSequence    *DuplicateSequenceError
//	ErrWrongExpectedVersion *WrongExpectedVersionError
//	ErrOffsetCompacted      *OffsetCompactedError
//	ErrSlowConsumer         *SlowConsumerError
//	ErrGap                  *GapError, *StreamGapError
//	ErrFenced               *FencedError
//
// A server error without a tsstore ErrorInfo detail is returned as the gRPC
// status error itself.
var (
	// ErrSequenceGap: the producer sequence is not the one the server
	// expects next (FailedPrecondition). Nothing was written.
	ErrSequenceGap = errors.New("tsstore: producer sequence gap")
	// ErrDuplicateSequence: a retry older than the server's dedup window.
	// The events were committed before, but their offsets are unknown.
	ErrDuplicateSequence = errors.New("tsstore: duplicate producer sequence outside dedup window")
	// ErrWrongExpectedVersion: an optimistic-concurrency expectation failed.
	// Nothing was written.
	ErrWrongExpectedVersion = errors.New("tsstore: wrong expected stream version")
	// ErrEventTooLarge: an event exceeds the server's size limit.
	ErrEventTooLarge = errors.New("tsstore: event too large")
	// ErrInvalidEvent: an event is malformed (e.g. empty stream or type).
	ErrInvalidEvent = errors.New("tsstore: invalid event")
	// ErrRequestTooLarge: the append as a whole exceeds the server's limit.
	ErrRequestTooLarge = errors.New("tsstore: request too large")
	// ErrNoLeader: the cluster had no reachable leader for the whole retry
	// budget. The append may or may not have been committed.
	ErrNoLeader = errors.New("tsstore: no leader")
	// ErrOffsetCompacted: the read starts below the first stored offset.
	ErrOffsetCompacted = errors.New("tsstore: offset compacted")
	// ErrCorruption: stored or received data failed an integrity check,
	// on the server (DataLoss) or while the client decoded a batch.
	ErrCorruption = errors.New("tsstore: corruption")
	// ErrStreamNotFound: a Replay or ReadBatches of a stream (the Stream
	// option) that has no events (NotFound). Subscribe waits instead.
	ErrStreamNotFound = errors.New("tsstore: stream not found")
	// ErrSlowConsumer: a subscriber fell further behind the live log than
	// the server allows (ResourceExhausted). Subscribe resumes from its
	// token on its own (see Stats and OnResume); the error is returned only
	// if resuming fails MaxRetries times in a row without progress.
	ErrSlowConsumer = errors.New("tsstore: slow consumer")
	// ErrGap: a read found events missing from what it received: offsets
	// (*GapError) or, in a single-stream read, stream versions
	// (*StreamGapError). The read stops at the gap and is not retried.
	ErrGap = errors.New("tsstore: gap in replayed offsets")
	// ErrProtocol: a server response broke the read protocol in a way that
	// is not a gap, e.g. a batch that overlaps one already delivered, a
	// next_offset that goes backwards, or a record that does not match the
	// read's filters.
	ErrProtocol = errors.New("tsstore: protocol violation")
	// ErrFenced: an append to a training run carried a generation other
	// than the run's current one: a newer job attempt started the run
	// again (StartRun), so this writer is a zombie of an older attempt
	// (FailedPrecondition). Nothing was written; do not retry.
	ErrFenced = errors.New("tsstore: run generation fenced")
	// ErrOverloaded: the node held as many bytes of append requests as its
	// budget allows (ResourceExhausted, OVERLOADED); nothing was written.
	// The SDK retries it with backoff (MaxRetries; an AsyncProducer until
	// its DeliveryTimeout) and returns it only when those are spent.
	ErrOverloaded = errors.New("tsstore: server overloaded")
	// ErrClosed: the Client was closed.
	ErrClosed = errors.New("tsstore: client closed")
	// ErrUnreachable: AppendOnce found no node that answered, so it sent
	// nothing; the events were not written.
	ErrUnreachable = errors.New("tsstore: no node reachable, nothing was sent")
)

// SequenceGapError details ErrSequenceGap.
type SequenceGapError struct {
	Expected, Got uint64 // producer sequence the server expected / received
	cause         error
}

func (e *SequenceGapError) Error() string {
	return fmt.Sprintf("%v: expected seq %d, got %d", ErrSequenceGap, e.Expected, e.Got)
}
func (e *SequenceGapError) Unwrap() []error { return []error{ErrSequenceGap, e.cause} }

// DuplicateSequenceError details ErrDuplicateSequence.
type DuplicateSequenceError struct {
	LastSeq uint64 // last sequence the server committed for the producer
	cause   error
}

func (e *DuplicateSequenceError) Error() string {
	return fmt.Sprintf("%v: server's last seq is %d", ErrDuplicateSequence, e.LastSeq)
}
func (e *DuplicateSequenceError) Unwrap() []error { return []error{ErrDuplicateSequence, e.cause} }

// WrongExpectedVersionError details ErrWrongExpectedVersion.
type WrongExpectedVersionError struct {
	Stream   string
	Actual   uint64 // events in the stream when the append was applied
	Expected string // the expectation as the server describes it
	cause    error
}

func (e *WrongExpectedVersionError) Error() string {
	return fmt.Sprintf("%v: stream %q has version %d, expected %s", ErrWrongExpectedVersion, e.Stream, e.Actual, e.Expected)
}
func (e *WrongExpectedVersionError) Unwrap() []error {
	return []error{ErrWrongExpectedVersion, e.cause}
}

// FencedError details ErrFenced.
type FencedError struct {
	Run        string
	Generation uint64 // the generation the append carried
	Current    uint64 // the run's generation
	cause      error
}

func (e *FencedError) Error() string {
	return fmt.Sprintf("%v: run %q is at generation %d, the append carried %d", ErrFenced, e.Run, e.Current, e.Generation)
}
func (e *FencedError) Unwrap() []error { return []error{ErrFenced, e.cause} }

// OffsetCompactedError details ErrOffsetCompacted.
type OffsetCompactedError struct {
	FirstOffset uint64 // first offset still stored; replay from here
	cause       error
}

func (e *OffsetCompactedError) Error() string {
	return fmt.Sprintf("%v: first stored offset is %d", ErrOffsetCompacted, e.FirstOffset)
}
func (e *OffsetCompactedError) Unwrap() []error { return []error{ErrOffsetCompacted, e.cause} }

// GapError details ErrGap in an unfiltered read: offsets [From, To) were
// never delivered although later offsets were, or although a response's
// next_offset claimed to cover them. The read stops at the gap.
type GapError struct {
	From, To uint64 // half-open range of missing offsets
}

func (e *GapError) Error() string {
	return fmt.Sprintf("%v: offsets [%d, %d) missing", ErrGap, e.From, e.To)
}
func (e *GapError) Is(target error) bool { return target == ErrGap }

// StreamGapError details ErrGap in a single-stream read: versions
// [FromVersion, ToVersion) of Stream were never delivered although version
// ToVersion, at Offset, was. The read stops before that event.
type StreamGapError struct {
	Stream                 string
	FromVersion, ToVersion uint64 // half-open range of missing versions
	Offset                 uint64 // offset of the event with version ToVersion
}

func (e *StreamGapError) Error() string {
	return fmt.Sprintf("%v: stream %q versions [%d, %d) missing before offset %d",
		ErrGap, e.Stream, e.FromVersion, e.ToVersion, e.Offset)
}
func (e *StreamGapError) Is(target error) bool { return target == ErrGap }

// SlowConsumerError details ErrSlowConsumer.
type SlowConsumerError struct {
	Lag   uint64 // offsets between the subscriber and the log end when cut off
	cause error
}

func (e *SlowConsumerError) Error() string {
	return fmt.Sprintf("%v: %d offsets behind the log end", ErrSlowConsumer, e.Lag)
}
func (e *SlowConsumerError) Unwrap() []error { return []error{ErrSlowConsumer, e.cause} }

// reasonError pairs a sentinel with the status error that carried it.
type reasonError struct {
	sentinel, cause error
}

func (e *reasonError) Error() string   { return e.sentinel.Error() + ": " + e.cause.Error() }
func (e *reasonError) Unwrap() []error { return []error{e.sentinel, e.cause} }

// errorInfo returns the tsstore ErrorInfo attached to a status error.
func errorInfo(err error) (*errdetails.ErrorInfo, bool) {
	st, ok := status.FromError(err)
	if !ok || st == nil {
		return nil, false
	}
	for _, d := range st.Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok && ei.GetDomain() == ErrorDomain {
			return ei, true
		}
	}
	return nil, false
}

// fromStatus maps a gRPC error to the client's error types. Errors that are
// not gRPC statuses or carry no tsstore ErrorInfo are returned unchanged.
func fromStatus(err error) error {
	ei, ok := errorInfo(err)
	if !ok {
		return err
	}
	md := ei.GetMetadata()
	u := func(k string) uint64 {
		v, _ := strconv.ParseUint(md[k], 10, 64)
		return v
	}
	switch tsstorev1.ErrorReason(tsstorev1.ErrorReason_value[ei.GetReason()]) {
	case tsstorev1.ErrorReason_ERROR_REASON_SEQUENCE_GAP:
		return &SequenceGapError{Expected: u("expected_seq"), Got: u("got_seq"), cause: err}
	case tsstorev1.ErrorReason_ERROR_REASON_DUPLICATE_SEQUENCE:
		return &DuplicateSequenceError{LastSeq: u("last_seq"), cause: err}
	case tsstorev1.ErrorReason_ERROR_REASON_WRONG_EXPECTED_VERSION:
		return &WrongExpectedVersionError{Stream: md["stream"], Actual: u("actual_version"), Expected: md["expected"], cause: err}
	case tsstorev1.ErrorReason_ERROR_REASON_EVENT_TOO_LARGE:
		return &reasonError{ErrEventTooLarge, err}
	case tsstorev1.ErrorReason_ERROR_REASON_INVALID_EVENT:
		return &reasonError{ErrInvalidEvent, err}
	case tsstorev1.ErrorReason_ERROR_REASON_REQUEST_TOO_LARGE:
		return &reasonError{ErrRequestTooLarge, err}
	case tsstorev1.ErrorReason_ERROR_REASON_NO_LEADER:
		return &reasonError{ErrNoLeader, err}
	case tsstorev1.ErrorReason_ERROR_REASON_OFFSET_COMPACTED:
		return &OffsetCompactedError{FirstOffset: u("first_offset"), cause: err}
	case tsstorev1.ErrorReason_ERROR_REASON_CORRUPTION:
		return &reasonError{ErrCorruption, err}
	case tsstorev1.ErrorReason_ERROR_REASON_STREAM_NOT_FOUND:
		return &reasonError{ErrStreamNotFound, err}
	case tsstorev1.ErrorReason_ERROR_REASON_SLOW_CONSUMER:
		return &SlowConsumerError{Lag: u("lag"), cause: err}
	case tsstorev1.ErrorReason_ERROR_REASON_OVERLOADED:
		return &reasonError{ErrOverloaded, err}
	case tsstorev1.ErrorReason_ERROR_REASON_FENCED:
		return &FencedError{Run: md["run"], Generation: u("generation"), Current: u("current_generation"), cause: err}
	}
	return err
}

// overloaded reports whether err is a node's OVERLOADED refusal: nothing
// was written, and the same request may go through after a backoff.
func overloaded(err error) bool {
	ei, ok := errorInfo(err)
	return ok && ei.GetReason() == tsstorev1.ErrorReason_ERROR_REASON_OVERLOADED.String()
}

// leaderHint returns the leader address a NO_LEADER error names, if any.
func leaderHint(err error) string {
	ei, ok := errorInfo(err)
	if !ok || ei.GetReason() != tsstorev1.ErrorReason_ERROR_REASON_NO_LEADER.String() {
		return ""
	}
	return ei.GetMetadata()["leader_api_address"]
}
