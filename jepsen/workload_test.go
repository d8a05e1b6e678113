package jepsen

import (
	"errors"
	"fmt"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/tsstore/tsstore/proto/tsstorev1"
)

// The leader's DISK_FULL refusal is told from other ResourceExhausted
// errors by its ErrorInfo reason, also when the SDK wraps it.
func TestIsDiskFull(t *testing.T) {
	st, err := status.New(codes.ResourceExhausted, "node n1 refuses appends").
		WithDetails(&errdetails.ErrorInfo{Reason: pb.ErrorReason_ERROR_REASON_DISK_FULL.String(), Domain: "tsstore.io"})
	if err != nil {
		t.Fatal(err)
	}
	other, _ := status.New(codes.ResourceExhausted, "too many streams").
		WithDetails(&errdetails.ErrorInfo{Reason: "TOO_MANY_STREAMS", Domain: "tsstore.io"})
	for _, c := range []struct {
		err  error
		want bool
	}{
		{st.Err(), true},
		{fmt.Errorf("client: %w", st.Err()), true},
		{other.Err(), false},
		{status.Error(codes.ResourceExhausted, "no details"), false},
		{status.Error(codes.Unavailable, "DISK_FULL"), false},
		{errors.New("DISK_FULL"), false},
	} {
		if got := isDiskFull(c.err); got != c.want {
			t.Errorf("isDiskFull(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
