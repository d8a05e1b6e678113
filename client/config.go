package client

import (
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Config configures a Client. Start from DefaultConfig and override fields.
type Config struct {
	// Addrs are the gRPC API addresses (host:port) of any subset of the
	// cluster's nodes. At least one is required; the leader may be outside
	// the list, it is learned from Status.
	Addrs []string
	// DialTimeout (duration) is the minimum time allowed for establishing a
	// connection to one node before the attempt counts as failed.
	DialTimeout time.Duration
	// RequestTimeout (duration) bounds one attempt of a unary call (Append,
	// Status, a ListStreams page), leader discovery included. When it
	// expires the attempt is retried on another node. Zero means attempts
	// are bounded only by the caller's context. It does not apply to read
	// streams (Replay, ReadBatches, Subscribe).
	RequestTimeout time.Duration
	// MaxRetries (count) is how many times a failed attempt is retried after
	// the first one; 0 disables retries. For read streams (Replay,
	// ReadBatches, Subscribe) it counts consecutive failures without
	// progress, so a long subscription survives any number of failovers.
	MaxRetries int
	// RetryBackoff (duration) is the pause before the first retry; it
	// doubles on each further retry, with jitter, up to MaxRetryBackoff.
	RetryBackoff time.Duration
	// MaxRetryBackoff (duration) caps the pause between retries. It also
	// caps gRPC's own reconnect backoff, so a restarted node is found again
	// quickly.
	MaxRetryBackoff time.Duration
	// DialOptions are passed to grpc.NewClient for every node after the
	// client's own (connect timeout and backoff), so they may override them.
	// They must include transport credentials unless TLS is set;
	// DefaultConfig uses insecure (plaintext) credentials.
	DialOptions []grpc.DialOption
	// TLS, if set, secures every connection: the server's certificate is
	// verified against TLS.RootCAs (the system roots when nil) and
	// TLS.ServerName (the dialled host when empty); TLS.Certificates is the
	// client certificate for servers that require one. It replaces the
	// transport credentials in DialOptions. LoadTLS builds it from files.
	TLS *tls.Config
	// Token is a bearer token sent with every call as
	// "authorization: Bearer <token>". It requires TLS, so that it never
	// crosses a network in clear, unless InsecureToken is set.
	Token string
	// InsecureToken lets Token go over plaintext connections: only for a
	// TLS-terminating proxy on the same host.
	InsecureToken bool
	// UnaryAppend makes producers send each append as its own unary Append
	// call instead of over the client's shared AppendStream to the node
	// (append_stream.go): for a proxy that does not pass bidirectional
	// streams, or to compare the two.
	UnaryAppend bool
}

// DefaultConfig returns a Config for a cluster at addrs. The defaults ride
// out a leader election (a few seconds of retries).
func DefaultConfig(addrs ...string) Config {
	return Config{
		Addrs:           append([]string(nil), addrs...),
		DialTimeout:     5 * time.Second,
		RequestTimeout:  10 * time.Second,
		MaxRetries:      10,
		RetryBackoff:    50 * time.Millisecond,
		MaxRetryBackoff: 2 * time.Second,
		DialOptions:     []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())},
	}
}

// Validate reports the first invalid field.
func (c Config) Validate() error {
	if len(c.Addrs) == 0 {
		return errors.New("client: Config.Addrs is empty")
	}
	for i, a := range c.Addrs {
		if a == "" {
			return fmt.Errorf("client: Config.Addrs[%d] is empty", i)
		}
	}
	switch {
	case c.DialTimeout <= 0:
		return fmt.Errorf("client: Config.DialTimeout %v must be positive", c.DialTimeout)
	case c.RequestTimeout < 0:
		return fmt.Errorf("client: Config.RequestTimeout %v must not be negative", c.RequestTimeout)
	case c.MaxRetries < 0:
		return fmt.Errorf("client: Config.MaxRetries %d must not be negative", c.MaxRetries)
	case c.RetryBackoff <= 0:
		return fmt.Errorf("client: Config.RetryBackoff %v must be positive", c.RetryBackoff)
	case c.MaxRetryBackoff < c.RetryBackoff:
		return fmt.Errorf("client: Config.MaxRetryBackoff %v is below RetryBackoff %v", c.MaxRetryBackoff, c.RetryBackoff)
	case c.Token != "" && c.TLS == nil && !c.InsecureToken:
		return errors.New("client: Config.Token needs Config.TLS (a bearer token must not cross the network in clear); " +
			"set InsecureToken only for a TLS-terminating proxy on this host")
	case strings.ContainsAny(c.Token, " \t\r\n"):
		return errors.New("client: Config.Token contains white space")
	}
	return nil
}
