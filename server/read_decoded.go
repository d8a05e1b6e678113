package server

import (
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	pb "github.com/tsstore/tsstore/proto/tsstorev1"
	"github.com/tsstore/tsstore/record"
)

// A decoded read (ReadRequest.decoded) sends the events the selection
// keeps as DecodedEvent messages, so a client without the batch decoder
// (grpcurl, another language) can read them. It reads the log exactly as
// a raw read does (reader.next, with the same filters and send budget)
// and only changes the message's form:
//
//   - events outside the selection are dropped, including those a raw
//     read leaves for the client to skip (the part of the first batch
//     before the start, the part of the last batch past to_offset);
//   - a message holds at most sel.maxBytes of encoded events (at least
//     one event): decoding adds ~30 bytes of field tags and header copies
//     per event, so the batches read may not fit. A message cut short
//     ends after its last event, and the next one starts there, inside
//     the batch, which the log reads again.
//
// next_offset keeps its meaning: every selected event before it was sent.

// decodedHeaderBytes bounds a ReadResponse's fields other than events.
const decodedHeaderBytes = 2 * (1 + 10) // next_offset, log_next_offset: tag and varint

// sendDecoded decodes buf (the batches covering [sel.from, next)) and sends
// the selected events, at least one message unless buf holds none and the
// read is not at end.
func (r *reader) sendDecoded(stream grpc.ServerStream, buf *[]byte, next, end, logEnd uint64, start time.Time) error {
	evs, next, size, err := r.decode(*buf, next)
	if err != nil {
		put(buf)
		return toStatus(r.n.noteCorruption(err))
	}
	if next <= r.sel.from {
		put(buf)
		return toStatus(fmt.Errorf("read made no progress at offset %d", r.sel.from))
	}
	r.sel.from = next
	if len(evs) == 0 && next < end {
		put(buf)
		r.budget.skip()
		return nil
	}
	// The events' metadata and payload alias buf; sendMsg encodes the
	// message before it releases buf.
	err = r.sendMsg(stream, &pb.ReadResponse{Events: evs, NextOffset: next, LogNextOffset: logEnd}, buf)
	r.m.sentEvents(len(evs), size, start, err)
	return err
}

// decode returns the events of buf that the selection keeps, until their
// encoded size would pass sel.maxBytes, and the offset the message covers
// up to: next, or the offset after the last event when it stops early.
func (r *reader) decode(buf []byte, next uint64) ([]*pb.DecodedEvent, uint64, int, error) {
	var evs []*pb.DecodedEvent
	size := decodedHeaderBytes
	for len(buf) > 0 {
		b, rest, err := record.Next(buf)
		if err != nil {
			return nil, 0, 0, err
		}
		buf = rest
		h := b.Header()
		if h.BaseOffset >= next {
			break
		}
		if h.IsControl() {
			continue // not events (hideDeleted's markers)
		}
		it := b.Records()
		var rec record.Record
		for it.Next(&rec) {
			if rec.Offset >= next {
				break
			}
			if !r.sel.keep(&rec) {
				continue
			}
			ev := &pb.DecodedEvent{
				Offset: rec.Offset, Stream: string(rec.Stream), StreamVersion: rec.StreamVersion,
				Type: string(rec.Type), ProducerId: string(rec.ProducerID), ProducerSeq: rec.ProducerSeq,
				TimestampUnixNano: h.Timestamp, RaftIndex: h.RaftIndex,
				Metadata: rec.Metadata, Payload: rec.Payload,
			}
			n := protowire.SizeTag(4) + protowire.SizeBytes(proto.Size(ev))
			if len(evs) > 0 && size+n > r.sel.maxBytes {
				return evs, rec.Offset, size, nil
			}
			evs = append(evs, ev)
			size += n
		}
		if err := it.Err(); err != nil {
			return nil, 0, 0, err
		}
	}
	return evs, next, size, nil
}
