// Package tsstorev1 is the Go code generated from
// proto/tsstore/v1/tsstore.proto: the messages and the EventStore and
// Cluster gRPC services of the tsstore.v1 API.
//
// Every *.pb.go file here is generated; edit the .proto and run
//
//	scripts/genproto.sh
//
// which installs pinned buf, protoc-gen-go and protoc-gen-go-grpc into
// ./.tools/bin and regenerates byte for byte. CI runs
// scripts/genproto.sh --check, which fails if the committed files drift.
// This file is hand-written and is not touched by the generator.
//
// The record batches carried in ReadResponse.batches are not protobuf: their
// layout is drawn in package record.
package tsstorev1
