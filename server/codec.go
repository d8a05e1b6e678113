package server

import (
	"context"
	"fmt"
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
	left     *sync.Map // proto.Message -> func(): called once gRPC has freed its encoding
}

func newStrictCodec() strictCodec {
	return strictCodec{CodecV2: encoding.GetCodecV2(proto.Name), bad: &sync.Map{}, released: &sync.Map{}, left: &sync.Map{}}
}

// Marshal implements encoding.CodecV2. Once m is encoded, into gRPC's
// pooled buffers, what it refers to is no longer needed: a release
// registered for m (sendReleasing) runs, before gRPC's Send can block on
// flow control.
func (c strictCodec) Marshal(m any) (mem.BufferSlice, error) {
	var data mem.BufferSlice
	var err error
	if f, ok := c.left.LoadAndDelete(m); ok {
		data, err = marshalTracked(m, f.(func()))
	} else {
		data, err = c.CodecV2.Marshal(m)
	}
	if f, ok := c.released.LoadAndDelete(m); ok {
		f.(func())()
	}
	return data, err
}

// sendReleasing sends m on stream and calls release once m is encoded, or
// when SendMsg returns without encoding it; exactly once. left, if set, is
// called once gRPC has freed m's encoding: the transport wrote it to the
// connection, or dropped it with the stream (it runs on gRPC's writer
// goroutine); or when SendMsg returns without encoding m.
func (c strictCodec) sendReleasing(stream grpc.ServerStream, m any, release, left func()) error {
	c.released.Store(m, release)
	if left != nil {
		c.left.Store(m, left)
	}
	err := stream.SendMsg(m)
	if f, ok := c.released.LoadAndDelete(m); ok {
		f.(func())()
	}
	if f, ok := c.left.LoadAndDelete(m); ok {
		f.(func())()
	}
	return err
}

// trackedMinBytes keeps a tracked encoding above gRPC's pooling threshold
// (1 KiB): below it a buffer is never freed, so left would never run.
const trackedMinBytes = 4 << 10

// marshalTracked encodes m into one pooled buffer whose return to the
// pool calls left: gRPC frees a message's buffers when its transport has
// written them or dropped them with the stream. gRPC compresses into
// buffers of its own, but this server registers no compressor, so what
// is sent is this buffer.
func marshalTracked(m any, left func()) (mem.BufferSlice, error) {
	pm, ok := m.(protov2.Message)
	if !ok {
		left()
		return nil, fmt.Errorf("tracked encoding of %T, not a proto message", m)
	}
	pool := mem.DefaultBufferPool()
	size := protov2.Size(pm)
	buf := pool.Get(max(size, trackedMinBytes))
	out, err := protov2.MarshalOptions{UseCachedSize: true}.MarshalAppend((*buf)[:0], pm)
	if err != nil {
		pool.Put(buf)
		left()
		return nil, err
	}
	*buf = out
	return mem.BufferSlice{mem.NewBuffer(buf, leftPool{BufferPool: pool, left: left})}, nil
}

// leftPool returns buffers to gRPC's pool and reports it.
type leftPool struct {
	mem.BufferPool
	left func()
}

func (p leftPool) Put(b *[]byte) {
	p.BufferPool.Put(b)
	p.left()
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
