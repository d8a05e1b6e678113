package client

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tsstore/tsstore/proto/tsstorev1"
)

// statusErr builds a server error the way the tsstore handlers do.
func statusErr(t testing.TB, code codes.Code, reason tsstorev1.ErrorReason, md map[string]string) error {
	t.Helper()
	st, err := status.New(code, "server says no").WithDetails(&errdetails.ErrorInfo{
		Domain: ErrorDomain, Reason: reason.String(), Metadata: md,
	})
	if err != nil {
		t.Fatalf("WithDetails: %v", err)
	}
	return st.Err()
}

func TestFromStatusTyped(t *testing.T) {
	t.Run("sequence gap", func(t *testing.T) {
		err := fromStatus(statusErr(t, codes.FailedPrecondition, tsstorev1.ErrorReason_ERROR_REASON_SEQUENCE_GAP,
			map[string]string{"expected_seq": "7", "got_seq": "9"}))
		var e *SequenceGapError
		if !errors.As(err, &e) || e.Expected != 7 || e.Got != 9 {
			t.Fatalf("got %#v", err)
		}
		if !errors.Is(err, ErrSequenceGap) || status.Code(err) != codes.FailedPrecondition {
			t.Fatalf("%v: not ErrSequenceGap/FailedPrecondition", err)
		}
	})
	t.Run("duplicate sequence", func(t *testing.T) {
		err := fromStatus(statusErr(t, codes.FailedPrecondition, tsstorev1.ErrorReason_ERROR_REASON_DUPLICATE_SEQUENCE,
			map[string]string{"last_seq": "41"}))
		var e *DuplicateSequenceError
		if !errors.As(err, &e) || e.LastSeq != 41 || !errors.Is(err, ErrDuplicateSequence) {
			t.Fatalf("got %#v", err)
		}
	})
	t.Run("wrong expected version", func(t *testing.T) {
		err := fromStatus(statusErr(t, codes.FailedPrecondition, tsstorev1.ErrorReason_ERROR_REASON_WRONG_EXPECTED_VERSION,
			map[string]string{"stream": "run/1", "actual_version": "3", "expected": "no_stream"}))
		var e *WrongExpectedVersionError
		if !errors.As(err, &e) || e.Stream != "run/1" || e.Actual != 3 || e.Expected != "no_stream" {
			t.Fatalf("got %#v", err)
		}
		if !errors.Is(err, ErrWrongExpectedVersion) {
			t.Fatalf("%v is not ErrWrongExpectedVersion", err)
		}
	})
	t.Run("offset compacted", func(t *testing.T) {
		err := fromStatus(statusErr(t, codes.OutOfRange, tsstorev1.ErrorReason_ERROR_REASON_OFFSET_COMPACTED,
			map[string]string{"first_offset": "1000"}))
		var e *OffsetCompactedError
		if !errors.As(err, &e) || e.FirstOffset != 1000 || !errors.Is(err, ErrOffsetCompacted) {
			t.Fatalf("got %#v", err)
		}
		if status.Code(err) != codes.OutOfRange {
			t.Fatalf("code %v, want OutOfRange", status.Code(err))
		}
	})
}

func TestFromStatusSentinels(t *testing.T) {
	for _, tc := range []struct {
		code   codes.Code
		reason tsstorev1.ErrorReason
		want   error
	}{
		{codes.InvalidArgument, tsstorev1.ErrorReason_ERROR_REASON_EVENT_TOO_LARGE, ErrEventTooLarge},
		{codes.InvalidArgument, tsstorev1.ErrorReason_ERROR_REASON_INVALID_EVENT, ErrInvalidEvent},
		{codes.InvalidArgument, tsstorev1.ErrorReason_ERROR_REASON_REQUEST_TOO_LARGE, ErrRequestTooLarge},
		{codes.Unavailable, tsstorev1.ErrorReason_ERROR_REASON_NO_LEADER, ErrNoLeader},
		{codes.DataLoss, tsstorev1.ErrorReason_ERROR_REASON_CORRUPTION, ErrCorruption},
	} {
		t.Run(tc.reason.String(), func(t *testing.T) {
			err := fromStatus(statusErr(t, tc.code, tc.reason, nil))
			if !errors.Is(err, tc.want) {
				t.Fatalf("%v is not %v", err, tc.want)
			}
			if status.Code(err) != tc.code {
				t.Fatalf("code %v, want %v", status.Code(err), tc.code)
			}
			// Wrapping further keeps both.
			wrapped := fmt.Errorf("append: %w", err)
			if !errors.Is(wrapped, tc.want) || status.Code(wrapped) != tc.code {
				t.Fatalf("wrapped %v lost its sentinel or code", wrapped)
			}
		})
	}
}

func TestFromStatusPassesUnknownThrough(t *testing.T) {
	plain := status.Error(codes.PermissionDenied, "nope")
	if got := fromStatus(plain); got != plain {
		t.Fatalf("plain status changed: %v", got)
	}
	other, err := status.New(codes.Aborted, "x").WithDetails(&errdetails.ErrorInfo{Domain: "example.com", Reason: "ERROR_REASON_SEQUENCE_GAP"})
	if err != nil {
		t.Fatal(err)
	}
	if got := fromStatus(other.Err()); errors.Is(got, ErrSequenceGap) || status.Code(got) != codes.Aborted {
		t.Fatalf("foreign domain mapped: %v", got)
	}
	unknownReason := statusErr(t, codes.Internal, tsstorev1.ErrorReason(99), nil)
	if got := fromStatus(unknownReason); got != unknownReason {
		t.Fatalf("unknown reason changed: %v", got)
	}
	notGRPC := errors.New("boom")
	if got := fromStatus(notGRPC); got != notGRPC {
		t.Fatalf("non-gRPC error changed: %v", got)
	}
}

func TestLeaderHint(t *testing.T) {
	err := statusErr(t, codes.Unavailable, tsstorev1.ErrorReason_ERROR_REASON_NO_LEADER,
		map[string]string{"leader_api_address": "10.0.0.3:7000"})
	if got := leaderHint(err); got != "10.0.0.3:7000" {
		t.Fatalf("leaderHint = %q", got)
	}
	if got := leaderHint(status.Error(codes.Unavailable, "down")); got != "" {
		t.Fatalf("leaderHint of a bare status = %q", got)
	}
}

func TestGapErrorIs(t *testing.T) {
	err := fmt.Errorf("replay: %w", &GapError{From: 5, To: 9})
	var g *GapError
	if !errors.Is(err, ErrGap) || !errors.As(err, &g) || g.From != 5 || g.To != 9 {
		t.Fatalf("got %v", err)
	}
}

func TestFromStatusReadReasons(t *testing.T) {
	err := fromStatus(statusErr(t, codes.NotFound, tsstorev1.ErrorReason_ERROR_REASON_STREAM_NOT_FOUND,
		map[string]string{"stream": "run/1"}))
	if !errors.Is(err, ErrStreamNotFound) || status.Code(err) != codes.NotFound {
		t.Fatalf("stream not found: %v", err)
	}
	err = fromStatus(statusErr(t, codes.ResourceExhausted, tsstorev1.ErrorReason_ERROR_REASON_SLOW_CONSUMER,
		map[string]string{"lag": "77"}))
	var sc *SlowConsumerError
	if !errors.As(err, &sc) || sc.Lag != 77 || !errors.Is(err, ErrSlowConsumer) || status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("slow consumer: %#v", err)
	}
	gap := fmt.Errorf("read: %w", &StreamGapError{Stream: "s", FromVersion: 3, ToVersion: 5, Offset: 9})
	var sg *StreamGapError
	if !errors.Is(gap, ErrGap) || !errors.As(gap, &sg) || sg.ToVersion != 5 {
		t.Fatalf("stream gap: %v", gap)
	}
}

func TestMayHaveCommitted(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{context.DeadlineExceeded, true},
		{ErrClosed, true},
		{status.Error(codes.Unavailable, "leader lost"), true},
		{status.Error(codes.FailedPrecondition, "wrong expected version"), false},
		{status.Error(codes.PermissionDenied, "read token"), false},
		{status.Error(codes.InvalidArgument, "too large"), false},
	} {
		if got := MayHaveCommitted(c.err); got != c.want {
			t.Errorf("MayHaveCommitted(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
