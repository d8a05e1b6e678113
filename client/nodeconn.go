package client

import "google.golang.org/grpc"

// NodeConn returns the client's connection to the node at addr (one of
// Config.Addrs or any other node), made with the client's dial options,
// TLS and token. Admin tools use it for calls that must reach one node,
// such as the Cluster service's Snapshot and Backup
// (tsstorev1.NewClusterClient). The connection is owned by the client and
// closed by Close.
func (c *Client) NodeConn(addr string) (grpc.ClientConnInterface, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.mu.closed {
		return nil, ErrClosed
	}
	n, err := c.nodeLocked(addr)
	if err != nil {
		return nil, err
	}
	return n.conn, nil
}
