package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tsstore/tsstore/client"
)

// clientFlags are the connection flags every client command shares.
type clientFlags struct {
	addrs   string
	timeout time.Duration
	json    bool
	sec     securityFlags
}

// securityFlags select TLS and the bearer token (docs/operations.md#security).
// Each also comes from an environment variable when the flag is not given;
// the token best comes only from there, out of ps and shell history.
type securityFlags struct {
	tls                       bool
	ca, cert, key, serverName string
	token                     string
}

// devAddrs are the API addresses of `tsstore dev` with its default
// --base-port, dialled when neither --addr nor TSSTORE_ADDR is given.
const devAddrs = "127.0.0.1:7201,127.0.0.1:7202,127.0.0.1:7203"

// dialProbeTimeout bounds the check that some node answers at all, so a
// wrong address fails in about this long with a hint rather than after the
// client's retries with a raw gRPC error.
const dialProbeTimeout = 2 * time.Second

func (c *clientFlags) register(fs *pflag.FlagSet) { c.registerTimeout(fs, 10*time.Second) }

// registerTimeout is register with another default --timeout, for a
// command whose work grows with the data (run verify folds whole runs);
// 0 means none.
func (c *clientFlags) registerTimeout(fs *pflag.FlagSet, timeout time.Duration) {
	fs.StringVar(&c.addrs, "addr", "", "comma-separated API addresses of any cluster nodes (default: env TSSTORE_ADDR, else "+devAddrs+", the ports of `tsstore dev`)")
	fs.DurationVar(&c.timeout, "timeout", timeout, "overall time limit of the command (0: none)")
	fs.BoolVar(&c.json, "json", false, "print JSON instead of text")
	c.sec.register(fs)
}

func (s *securityFlags) register(fs *pflag.FlagSet) {
	fs.BoolVar(&s.tls, "tls", false, "use TLS, verifying servers against the system's CA roots (implied by --ca and --cert; env TSSTORE_TLS=1)")
	fs.StringVar(&s.ca, "ca", "", "PEM CA bundle to verify the servers' certificates; turns on TLS (env TSSTORE_CA)")
	fs.StringVar(&s.cert, "cert", "", "PEM client certificate, for servers that require one (env TSSTORE_CERT)")
	fs.StringVar(&s.key, "key", "", "PEM private key of --cert (env TSSTORE_KEY)")
	fs.StringVar(&s.serverName, "server-name", "", "name to verify in the servers' certificates instead of the dialled host (env TSSTORE_SERVER_NAME)")
	fs.StringVar(&s.token, "token", "", "bearer token; better set TSSTORE_TOKEN, which stays out of ps and shell history")
}

// fromEnv fills what the flags left empty from TSSTORE_* variables.
func (s *securityFlags) fromEnv() {
	for _, v := range []struct {
		dst *string
		env string
	}{{&s.ca, "TSSTORE_CA"}, {&s.cert, "TSSTORE_CERT"}, {&s.key, "TSSTORE_KEY"},
		{&s.serverName, "TSSTORE_SERVER_NAME"}, {&s.token, "TSSTORE_TOKEN"}} {
		if *v.dst == "" {
			*v.dst = os.Getenv(v.env)
		}
	}
	if !s.tls {
		s.tls = os.Getenv("TSSTORE_TLS") == "1"
	}
}

// apply sets cfg.TLS and cfg.Token.
func (s *securityFlags) apply(cfg *client.Config) error {
	s.fromEnv()
	if s.tls || s.ca != "" || s.cert != "" || s.key != "" || s.serverName != "" {
		t, err := client.LoadTLS(s.ca, s.cert, s.key, s.serverName)
		if err != nil {
			return fmt.Errorf("%w: %v", errUsage, err)
		}
		cfg.TLS = t
	}
	if s.token != "" && cfg.TLS == nil {
		return fmt.Errorf("%w: a token needs TLS (--ca, or --tls for servers under a public CA): it must not cross the network in clear", errUsage)
	}
	cfg.Token = s.token
	return nil
}

// securityHint turns a refusal into what to do about it; "" if err is
// not one.
func securityHint(err error) string {
	if _, ok := status.FromError(err); !ok {
		return "" // not from a call: e.g. a config error of serve
	}
	msg := err.Error()
	switch {
	case status.Code(err) == codes.Unauthenticated:
		return "this cluster wants a bearer token: set TSSTORE_TOKEN (or --token) to a token from its tokens file"
	case status.Code(err) == codes.PermissionDenied:
		return "the token's role is too low for this command (read < append < admin); see docs/operations.md#security"
	case strings.Contains(msg, "error reading server preface"):
		return "if the server has TLS on, pass --ca <CA file> (or --tls for a public CA)"
	case strings.Contains(msg, "first record does not look like a TLS handshake"):
		return "the server does not use TLS: drop --tls, --ca and TSSTORE_CA"
	case strings.Contains(msg, "certificate signed by unknown authority"):
		return "--ca must be the CA bundle that signed the servers' certificates"
	case strings.Contains(msg, "certificate is valid for"):
		return "the certificate does not name the address dialled: dial a name it carries, or pass --server-name"
	}
	return ""
}

// addrList is --addr, else TSSTORE_ADDR, else the dev cluster's ports,
// split at commas.
func (c *clientFlags) addrList() []string {
	v := c.addrs
	if v == "" {
		v = os.Getenv("TSSTORE_ADDR")
	}
	if strings.TrimSpace(v) == "" {
		v = devAddrs
	}
	var out []string
	for _, a := range strings.Split(v, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}

// addrSource says where the addresses came from, for error messages.
func (c *clientFlags) addrSource() string {
	switch {
	case c.addrs != "":
		return "--addr"
	case strings.TrimSpace(os.Getenv("TSSTORE_ADDR")) != "":
		return "TSSTORE_ADDR"
	}
	return "the default (the ports of `tsstore dev`)"
}

// unreachableError: no address accepted a connection.
type unreachableError struct {
	addrs  []string
	source string
}

func (e *unreachableError) Error() string {
	return fmt.Sprintf("no tsstore node answers at %s (from %s) within %v; set --addr or TSSTORE_ADDR (a comma list) to the API addresses of the cluster's nodes",
		strings.Join(e.addrs, ", "), e.source, dialProbeTimeout)
}

// probe returns nil as soon as one address accepts a TCP connection, and
// an *unreachableError if none does within dialProbeTimeout.
func probe(addrs []string, source string) error {
	ctx, cancel := context.WithTimeout(context.Background(), dialProbeTimeout)
	defer cancel()
	ok := make(chan bool, len(addrs))
	for _, a := range addrs {
		go func() {
			var d net.Dialer
			conn, err := d.DialContext(ctx, "tcp", a)
			if err == nil {
				conn.Close()
			}
			ok <- err == nil
		}()
	}
	for range addrs {
		if <-ok {
			return nil
		}
	}
	return &unreachableError{addrs: addrs, source: source}
}

// config is the client configuration the flags select.
func (c *clientFlags) config() (client.Config, error) {
	cfg := client.DefaultConfig(c.addrList()...)
	return cfg, c.sec.apply(&cfg)
}

// connect makes a client after checking that some node answers, and a
// context bounded by --timeout (none if 0) that Ctrl-C and SIGTERM cancel.
func (c *clientFlags) connect() (*client.Client, context.Context, context.CancelFunc, error) {
	cfg, err := c.config()
	if err != nil {
		return nil, nil, nil, err
	}
	if err := probe(cfg.Addrs, c.addrSource()); err != nil {
		return nil, nil, nil, err
	}
	cl, err := client.New(cfg)
	if err != nil {
		return nil, nil, nil, err
	}
	ctx, cancel := c.context()
	return cl, ctx, cancel, nil
}

// context is bounded by --timeout (none if 0) and ends on Ctrl-C or SIGTERM.
func (c *clientFlags) context() (context.Context, context.CancelFunc) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	if c.timeout <= 0 {
		return ctx, stop
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	return ctx, func() { cancel(); stop() }
}
