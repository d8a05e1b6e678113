package server

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/tsstore/tsstore/proto/tsstorev1"
)

// rawCodec sends []byte as the message, whatever it holds.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v any) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

// Bytes that are not the request message, or a string field that is not
// UTF-8, are the client's mistake: InvalidArgument, on unary and streaming
// calls alike, and the node goes on serving.
func TestMalformedRequestsAreInvalidArgument(t *testing.T) {
	tc := newTestCluster(t, 1, nil)
	n := tc.leader()
	conn, err := grpc.NewClient(n.APIAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	good, err := proto.Marshal(&pb.AppendRequest{Events: []*pb.Event{{Stream: "run/aX", Type: "T"}}})
	if err != nil {
		t.Fatal(err)
	}
	goodRead, err := proto.Marshal(&pb.ReadRequest{Stream: "run/aX"})
	if err != nil {
		t.Fatal(err)
	}
	notUTF8 := func(b []byte) []byte { return bytes.Replace(b, []byte("run/aX"), []byte("run/a\xff"), 1) }
	for name, msgs := range map[string][2][]byte{"garbage": {{0xff, 0xff, 0xff, 0x01}, {0xff, 0xff, 0xff, 0x01}}, "not UTF-8": {notUTF8(good), notUTF8(goodRead)}} {
		var out []byte
		msg := msgs[0]
		err := conn.Invoke(context.Background(), "/tsstore.v1.EventStore/Append", &msg, &out, grpc.ForceCodec(rawCodec{}))
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("Append with %s: %v, want InvalidArgument", name, err)
		}
		msg = msgs[1]
		desc := &grpc.StreamDesc{ServerStreams: true}
		s, err := conn.NewStream(context.Background(), desc, "/tsstore.v1.EventStore/Read", grpc.ForceCodec(rawCodec{}))
		if err == nil {
			if err = s.SendMsg(&msg); err == nil {
				s.CloseSend()
				err = s.RecvMsg(&out)
			}
		}
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("Read with %s: %v, want InvalidArgument", name, err)
		}
	}
	if _, err := dial(t, n).Append(ctxT(t), &pb.AppendRequest{Events: []*pb.Event{ev("s", "v")}}); err != nil {
		t.Fatalf("a good append after the malformed ones: %v", err)
	}
}

// An unknown consistency value is refused, not taken as LOCAL.
func TestUnknownConsistencyIsInvalidArgument(t *testing.T) {
	tc := newTestCluster(t, 1, nil)
	stream, err := dial(t, tc.leader()).Read(ctxT(t), &pb.ReadRequest{Consistency: pb.Consistency(7)})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "unknown consistency 7") {
		t.Fatalf("consistency 7: %v", err)
	}
}

// releasingStream stands for gRPC's server stream: SendMsg encodes with
// the codec (unless fail is set) and then would block on flow control;
// it records whether the message's release had run by then.
type releasingStream struct {
	grpc.ServerStream
	c                 strictCodec
	fail              bool
	releasedAtEncoded bool
	released          *int
}

func (s *releasingStream) SendMsg(m any) error {
	if s.fail {
		return status.Error(codes.Canceled, "stream ended before the message was encoded")
	}
	if _, err := s.c.Marshal(m); err != nil {
		return err
	}
	s.releasedAtEncoded = *s.released == 1
	return nil
}

// A read message's buffer goes back once the message is encoded, before
// Send can block, and exactly once, also when Send fails before encoding.
func TestSendReleasingReleasesOnceEncoded(t *testing.T) {
	c := newStrictCodec()
	for _, fail := range []bool{false, true} {
		released := 0
		s := &releasingStream{c: c, fail: fail, released: &released}
		msg := &pb.ReadResponse{Batches: []byte("batch"), NextOffset: 1}
		err := c.sendReleasing(s, msg, func() { released++ }, nil)
		if fail != (err != nil) {
			t.Fatalf("fail=%v: SendMsg returned %v", fail, err)
		}
		if released != 1 {
			t.Fatalf("fail=%v: released %d times, want once", fail, released)
		}
		if !fail && !s.releasedAtEncoded {
			t.Fatal("the buffer was still held after the message was encoded")
		}
		if _, ok := c.released.Load(msg); ok {
			t.Fatalf("fail=%v: the release stays registered", fail)
		}
	}
}
