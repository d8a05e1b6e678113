package jepsen

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	pb "github.com/tsstore/tsstore/proto/tsstorev1"
	"github.com/tsstore/tsstore/record"
)

// subscriber is a tail subscriber on the Subscribe RPC. After any error
// it resumes from the last delivered offset + 1 on the next node. If the
// server has no Subscribe (Unimplemented), it emulates one with repeated
// Reads from the last delivered offset + 1 and says so in the history.
func (w *workload) subscriber(ctx, stop context.Context, i int) {
	s := Subscription{Process: fmt.Sprintf("sub%d", i)}
	if i%2 == 1 { // one subscriber starts at 0, the other near the tail
		s.Start = w.maxAck.Load()
	}
	defer func() { w.rec.sub(s) }()
	var apis []pb.EventStoreClient
	for _, addr := range w.c.apiAddrs() {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
		if err != nil {
			s.Integrity = append(s.Integrity, err.Error())
			return
		}
		defer conn.Close()
		apis = append(apis, pb.NewEventStoreClient(conn))
	}
	next := s.Start
	for node := i; stop.Err() == nil; node++ {
		err := w.follow(stop, apis[node%len(apis)], &s, &next)
		if stop.Err() != nil {
			return
		}
		if status.Code(err) == codes.Unimplemented && !s.Emulated {
			s.Emulated = true
			continue
		}
		if first, ok := offsetCompacted(err); ok {
			// Retention cut the log above the resume point: go on from
			// the first kept offset (rule 12 judges the jump).
			s.Jumps = append(s.Jumps, Jump{From: next, To: first})
			if first > next {
				next = first
			}
		}
		if err != nil {
			s.Resumes = append(s.Resumes, next)
		}
		sleepCtx(stop, 100*time.Millisecond)
	}
}

// follow runs one Subscribe stream (or, emulated, Reads until an error)
// from *next, delivering records into s.
func (w *workload) follow(ctx context.Context, api pb.EventStoreClient, s *Subscription, next *uint64) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for {
		var stream grpc.ServerStreamingClient[pb.ReadResponse]
		var err error
		req := &pb.ReadRequest{FromOffset: *next}
		if s.Emulated {
			stream, err = api.Read(ctx, req)
		} else {
			stream, err = api.Subscribe(ctx, req)
		}
		if err != nil {
			return err
		}
		err = w.drain(stream, s, next)
		if !s.Emulated || !errors.Is(err, io.EOF) {
			return err
		}
		sleepCtx(ctx, 50*time.Millisecond) // emulated: poll again
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// drain receives messages until the stream fails. The first batch after a
// (re)start may begin before *next: those records are skipped. Any other
// record that does not continue the log is delivered anyway, for the
// checker to flag.
func (w *workload) drain(stream grpc.ServerStreamingClient[pb.ReadResponse], s *Subscription, next *uint64) error {
	fresh := true
	for {
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		buf := resp.GetBatches()
		for len(buf) > 0 {
			b, rest, err := record.Next(buf)
			if err != nil {
				s.Integrity = append(s.Integrity, fmt.Sprintf("undecodable batch at offset %d: %v", *next, err))
				return err
			}
			buf = rest
			h := b.Header()
			if h.IsControl() {
				// Not events: offsets whose events are not served.
				padDeliveries(s, h, next, h.NextOffset())
				fresh = false
				continue
			}
			it := b.Records()
			var r record.Record
			for it.Next(&r) {
				if fresh && r.Offset < *next {
					continue
				}
				if !h.Complete() {
					padDeliveries(s, h, next, r.Offset)
				}
				v := recordValue(h.IsControl(), string(r.Stream), string(r.Type), r.Payload)
				s.Deliveries = append(s.Deliveries, Delivery{r.Offset, v})
				*next = r.Offset + 1
			}
			if err := it.Err(); err != nil {
				s.Integrity = append(s.Integrity, fmt.Sprintf("bad record in batch at offset %d: %v", h.BaseOffset, err))
				return err
			}
			if !h.Complete() {
				padDeliveries(s, h, next, h.NextOffset())
			}
			fresh = false
		}
	}
}

// padDeliveries delivers compactedValue for the offsets of a thinned
// batch's span from *next up to to that compaction dropped (the batch's
// span says they are covered); rule 8 holds them to the final log.
func padDeliveries(s *Subscription, h record.Header, next *uint64, to uint64) {
	for ; *next < to && *next >= h.BaseOffset; *next++ {
		s.Deliveries = append(s.Deliveries, Delivery{*next, compactedValue})
	}
}
