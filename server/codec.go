package server

import (
	"context"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	protov2 "google.golang.org/protobuf/proto"
)

// A request that does not decode (malformed protobuf, a string field that
// is not UTF-8) is the client's mistake, so it is answered InvalidArgument.
// grpc turns a codec's error into Internal before any interceptor runs, so
// the codec below decodes such a message as empty and notes the error
// against it; the first interceptor (unary) or the stream's RecvMsg
// (streams) finds the note and refuses the call.
type strictCodec struct {
	encoding.CodecV2
	bad      *sync.Map // proto.Message -> decode error
	released *sync.Map // proto.Message -> func(): called once it is encoded
}

func newStrictCodec() strictCodec {
	return strictCodec{CodecV2: encoding.GetCodecV2(proto.Name), bad: &sync.Map{}, released: &sync.Map{}}
}

// Marshal implements encoding.CodecV2. Once m is encoded, into gRPC's
// pooled buffers, what it refers to is no longer needed: a release
// registered for m (sendReleasing) runs, before gRPC's Send can block on
// flow control.
func (c strictCodec) Marshal(m any) (mem.BufferSlice, error) {
	data, err := c.CodecV2.Marshal(m)
	if f, ok := c.released.LoadAndDelete(m); ok {
		f.(func())()
	}
	return data, err
}

// sendReleasing sends m on stream and calls release once m is encoded, or
// when SendMsg returns without encoding it; exactly once.
func (c strictCodec) sendReleasing(stream grpc.ServerStream, m any, release func()) error {
	c.released.Store(m, release)
	err := stream.SendMsg(m)
	if f, ok := c.released.LoadAndDelete(m); ok {
		f.(func())()
	}
	return err
}

// Unmarshal implements encoding.CodecV2.
func (c strictCodec) Unmarshal(data mem.BufferSlice, v any) error {
	err := c.CodecV2.Unmarshal(data, v)
	if m, ok := v.(protov2.Message); ok && err != nil {
		protov2.Reset(m)
		c.bad.Store(m, err)
		return nil
	}
	return err
}

// check returns InvalidArgument if m failed to decode.
func (c strictCodec) check(m any) error {
	if err, ok := c.bad.LoadAndDelete(m); ok {
		return status.Errorf(codes.InvalidArgument, "malformed request: %v", err)
	}
	return nil
}

func (c strictCodec) unary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if err := c.check(req); err != nil {
		return nil, err
	}
	return h(ctx, req)
}

func (c strictCodec) stream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	return h(srv, checkedStream{ServerStream: ss, c: c})
}

type checkedStream struct {
	grpc.ServerStream
	c strictCodec
}

func (s checkedStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	return s.c.check(m)
}
