package client

import (
	"context"

	"github.com/tsstore/tsstore/proto/tsstorev1"
)

// Cluster runs fn with a client of the Cluster service (membership,
// leadership transfer) on the leader if it is known, or else on some node,
// which forwards the call to the leader. Like Status, an attempt that
// finds the node unreachable or without a leader is retried on another
// node, so a call that changes the cluster may run twice: the second run
// then reports what the first did (e.g. AlreadyExists after AddMember).
// Errors are returned as the gRPC status errors the server sent.
func (c *Client) Cluster(ctx context.Context, fn func(context.Context, tsstorev1.ClusterClient) error) error {
	return c.call(ctx, func(ctx context.Context, _ string) (string, error) {
		n, err := c.pick(true)
		if err != nil {
			return "", err
		}
		return n.addr, fn(ctx, tsstorev1.NewClusterClient(n.conn))
	})
}
