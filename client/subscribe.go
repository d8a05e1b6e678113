package client

import (
	"context"
	"iter"
)

// Subscribe is a catch-up subscription: it yields the selected events from
// from on, like Replay with the same options (except To), and then every
// selected event as it commits, with no gap or duplicate at the switch. It
// never ends by itself: only an error, ctx (whose error is yielded), or
// breaking out of the loop ends it, and the latter two close the stream. A
// subscription to a stream with no events waits for its first event.
//
// Subscribe survives the serving node: when the stream fails with
// Unavailable (node down, connection reset, node shutting down) or is cut
// off with SLOW_CONSUMER because the consumer fell too far behind the live
// log, it resumes on another node from its resume token, the offset after
// the last batch or message it covered, with the same filters, and with
// min_next_offset at least that token, so a lagging node never serves a
// shorter log than one already read. Resumptions are counted in
// Client.Stats and reported to OnResume; Config.MaxRetries bounds the
// consecutive failures without progress before the error is yielded.
//
// A consumer that is slow simply holds back the server through gRPC flow
// control; only when it falls further behind than the server allows is it
// cut off and transparently resumed. OnProgress reports the resume token
// after each message (heartbeats included) and whether the subscription
// has caught up with the log.
//
//	for ev, err := range c.Subscribe(ctx, checkpoint, client.StreamPrefix("run/")) {
//		if err != nil {
//			return err // context.Canceled on shutdown
//		}
//		handle(ev)
//	}
func (c *Client) Subscribe(ctx context.Context, from uint64, opts ...ReadOption) iter.Seq2[RecordedEvent, error] {
	o := readOpts(opts)
	return func(yield func(RecordedEvent, error) bool) {
		d := newDeliverer(&o, yield)
		if err := c.read(ctx, from, &o, true, d.batch); err != nil {
			yield(RecordedEvent{}, err)
		}
	}
}

// Stats counts events in the life of a Client.
type Stats struct {
	// ReadResumes counts streams (Replay, ReadBatches, Subscribe) that
	// failed and were resumed on another node, SlowConsumerResumes included.
	ReadResumes uint64
	// SlowConsumerResumes counts subscriptions cut off by the server with
	// SLOW_CONSUMER and resumed.
	SlowConsumerResumes uint64
}

// Stats returns the client's counters.
func (c *Client) Stats() Stats {
	return Stats{
		ReadResumes:         c.stats.resumes.Load(),
		SlowConsumerResumes: c.stats.slowConsumer.Load(),
	}
}

func (c *Client) noteResume(slowConsumer bool) {
	c.stats.resumes.Add(1)
	if slowConsumer {
		c.stats.slowConsumer.Add(1)
	}
}
