package server

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/hashicorp/raft"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tsstore/tsstore/fsm"
	pb "github.com/tsstore/tsstore/proto/tsstorev1"
	"github.com/tsstore/tsstore/record"
	"github.com/tsstore/tsstore/segment"
)

// ErrorDomain is the google.rpc.ErrorInfo domain of tsstore errors.
const ErrorDomain = "tsstore.io"

// withReason builds a status carrying an ErrorInfo with the given reason.
func withReason(code codes.Code, reason pb.ErrorReason, msg string, md map[string]string) error {
	st := status.New(code, msg)
	if d, err := st.WithDetails(&errdetails.ErrorInfo{Reason: reason.String(), Domain: ErrorDomain, Metadata: md}); err == nil {
		st = d
	}
	return st.Err()
}

// toStatus maps an internal error to a gRPC status. It is called only at
// the handler edge.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	var (
		gap  *fsm.SequenceGapError
		dup  *fsm.DuplicateSequenceError
		wev  *fsm.WrongExpectedVersionError
		comp *segment.OffsetCompactedError
		fen  *fsm.FencedError
	)
	u := strconv.FormatUint
	switch {
	case errors.As(err, &gap):
		return withReason(codes.FailedPrecondition, pb.ErrorReason_ERROR_REASON_SEQUENCE_GAP, err.Error(),
			map[string]string{"expected_seq": u(gap.Expected, 10), "got_seq": u(gap.Got, 10)})
	case errors.As(err, &dup):
		return withReason(codes.FailedPrecondition, pb.ErrorReason_ERROR_REASON_DUPLICATE_SEQUENCE, err.Error(),
			map[string]string{"last_seq": u(dup.LastSeq, 10)})
	case errors.As(err, &wev):
		return withReason(codes.FailedPrecondition, pb.ErrorReason_ERROR_REASON_WRONG_EXPECTED_VERSION, err.Error(),
			map[string]string{"stream": wev.Stream, "actual_version": u(wev.Actual, 10), "expected": wev.Expected})
	case errors.As(err, &fen):
		return withReason(codes.FailedPrecondition, pb.ErrorReason_ERROR_REASON_FENCED, err.Error(),
			map[string]string{"run": fen.Run, "generation": u(fen.Have, 10), "current_generation": u(fen.Current, 10)})
	case errors.Is(err, fsm.ErrInvalidEvent):
		return withReason(codes.InvalidArgument, pb.ErrorReason_ERROR_REASON_INVALID_EVENT, err.Error(), nil)
	case errors.As(err, &comp):
		return withReason(codes.OutOfRange, pb.ErrorReason_ERROR_REASON_OFFSET_COMPACTED, err.Error(),
			map[string]string{"first_offset": u(comp.FirstOffset, 10)})
	case errors.Is(err, segment.ErrOffsetCompacted):
		return withReason(codes.OutOfRange, pb.ErrorReason_ERROR_REASON_OFFSET_COMPACTED, err.Error(), nil)
	case errors.Is(err, record.ErrCorrupt):
		return withReason(codes.DataLoss, pb.ErrorReason_ERROR_REASON_CORRUPTION, err.Error(), nil)
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipLost),
		errors.Is(err, raft.ErrLeadershipTransferInProgress), errors.Is(err, raft.ErrRaftShutdown),
		errors.Is(err, raft.ErrEnqueueTimeout), errors.Is(err, errNoLeader):
		return withReason(codes.Unavailable, pb.ErrorReason_ERROR_REASON_NO_LEADER, err.Error(), nil)
	case errors.Is(err, segment.ErrRemoteRead), errors.Is(err, segment.ErrNoRemote):
		// The tier target is down or refused the read: the bytes are not
		// known lost, so the read can be tried again.
		return status.Error(codes.Unavailable, "the tier target could not be read: "+err.Error())
	case errors.Is(err, fsm.ErrStorageFailed), errors.Is(err, segment.ErrClosed):
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	}
	return status.Error(codes.Internal, err.Error())
}

var errNoLeader = errors.New("no leader known")

func invalidArg(format string, args ...any) error {
	return withReason(codes.InvalidArgument, pb.ErrorReason_ERROR_REASON_INVALID_EVENT, fmt.Sprintf(format, args...), nil)
}
