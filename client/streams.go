package client

import (
	"context"
	"fmt"
	"iter"
	"time"

	"github.com/tsstore/tsstore/proto/tsstorev1"
)

// StreamInfo describes one stream.
type StreamInfo struct {
	Name          string
	Version       uint64    // number of events in the stream
	FirstOffset   uint64    // global offset of its first event
	LastOffset    uint64    // global offset of its last event
	LastTimestamp time.Time // commit time of its last event
}

// ListStreams yields the streams whose name starts with prefix ("" for
// all), in name order, fetching them a page at a time. Each page is one
// call, retried on other nodes like Status; pages may come from different
// nodes, so a listing taken while streams are created is not a snapshot.
// An error ends the iteration: it is yielded once, with a zero StreamInfo.
func (c *Client) ListStreams(ctx context.Context, prefix string) iter.Seq2[StreamInfo, error] {
	return func(yield func(StreamInfo, error) bool) {
		after, last := "", ""
		for {
			resp, err := c.listPage(ctx, prefix, after)
			if err != nil {
				yield(StreamInfo{}, err)
				return
			}
			for _, s := range resp.GetStreams() {
				if s.GetName() <= last {
					yield(StreamInfo{}, fmt.Errorf("%w: ListStreams: stream %q listed after %q", ErrProtocol, s.GetName(), last))
					return
				}
				last = s.GetName()
				if !yield(streamInfo(s), nil) {
					return
				}
			}
			switch next := resp.GetNextAfter(); {
			case next == "":
				return
			case next <= after:
				yield(StreamInfo{}, fmt.Errorf("%w: ListStreams: next_after %q does not advance past %q", ErrProtocol, next, after))
				return
			default:
				after = next
			}
		}
	}
}

func (c *Client) listPage(ctx context.Context, prefix, after string) (*tsstorev1.ListStreamsResponse, error) {
	var resp *tsstorev1.ListStreamsResponse
	err := c.call(ctx, func(ctx context.Context, _ string) (string, error) {
		n, err := c.pick(false)
		if err != nil {
			return "", err
		}
		resp, err = n.api.ListStreams(ctx, &tsstorev1.ListStreamsRequest{Prefix: prefix, After: after})
		return n.addr, err
	})
	return resp, err
}

func streamInfo(s *tsstorev1.StreamInfo) StreamInfo {
	return StreamInfo{
		Name:          s.GetName(),
		Version:       s.GetVersion(),
		FirstOffset:   s.GetFirstOffset(),
		LastOffset:    s.GetLastOffset(),
		LastTimestamp: time.Unix(0, s.GetLastTimestampUnixNano()),
	}
}
