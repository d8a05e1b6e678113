package client

import (
	"context"
	"fmt"
)

// AppendOnce commits events atomically without a producer: the server
// keeps no dedup state for it, so nothing is left behind (an operator's
// one-off append, `tsstore append`). Without a producer a retry could write
// the events twice, so the request is sent once: a definite refusal is
// returned as is, and an error for which MayHaveCommitted is true means
// the events may or may not be in the log (read to find out). Use a
// Producer for anything that must be exactly once.
func (c *Client) AppendOnce(ctx context.Context, events ...Event) (AppendResult, error) {
	req, err := (&Producer{c: c}).request(events, nil)
	if err != nil {
		return AppendResult{}, err
	}
	if c.cfg.RequestTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.cfg.RequestTimeout)
		defer cancel()
	}
	n, err := c.onceTarget(ctx)
	if err != nil {
		return AppendResult{}, err
	}
	resp, err := c.appendTo(ctx, n, req)
	if err != nil {
		c.failed(n.addr, err)
		err = fromStatus(err)
		if MayHaveCommitted(err) {
			return AppendResult{}, fmt.Errorf("%w (sent once, without a producer, and not retried: the events may or may not have been committed; read the stream to find out)", err)
		}
		return AppendResult{}, err
	}
	c.noteAppended(resp.GetLastOffset())
	return result(resp), nil
}

// onceTarget returns the node an AppendOnce goes to: the leader if known,
// else the first seed, in rotation, that answers Status (it forwards to
// the leader). A seed that is down or unreachable is passed over before
// anything is sent to it: with one node of three down, `tsstore append`
// failed about one time in three, in doubt though nothing had been sent.
// If no seed answers it fails with ErrUnreachable: nothing was sent.
func (c *Client) onceTarget(ctx context.Context) (*node, error) {
	var last error
	for range len(c.seeds) {
		n, err := c.leaderNode(ctx, "")
		if n == nil {
			return nil, fromStatus(err)
		}
		if err == nil || !retryable(ctx, err) {
			return n, nil // a node that answers, or refuses Status only
		}
		last = err
		c.failed(n.addr, err)
	}
	return nil, fmt.Errorf("%w (tried %d nodes): %w", ErrUnreachable, len(c.seeds), fromStatus(last))
}
