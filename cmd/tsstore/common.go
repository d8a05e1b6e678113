package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

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

func (c *clientFlags) register(fs *flag.FlagSet) { c.registerTimeout(fs, 10*time.Second) }

// registerTimeout is register with another default --timeout, for a
// command whose work grows with the data (run verify folds whole runs).
func (c *clientFlags) registerTimeout(fs *flag.FlagSet, timeout time.Duration) {
	fs.StringVar(&c.addrs, "addr", "127.0.0.1:7201,127.0.0.1:7202,127.0.0.1:7203", "comma-separated API addresses of any cluster nodes")
	fs.DurationVar(&c.timeout, "timeout", timeout, "overall time limit of the command")
	fs.BoolVar(&c.json, "json", false, "print JSON instead of text")
	c.sec.register(fs)
}

func (s *securityFlags) register(fs *flag.FlagSet) {
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

// config is the client configuration the flags select.
func (c *clientFlags) config() (client.Config, error) {
	cfg := client.DefaultConfig()
	for _, a := range strings.Split(c.addrs, ",") {
		if a = strings.TrimSpace(a); a != "" {
			cfg.Addrs = append(cfg.Addrs, a)
		}
	}
	return cfg, c.sec.apply(&cfg)
}

func (c *clientFlags) connect() (*client.Client, context.Context, context.CancelFunc, error) {
	cfg, err := c.config()
	if err != nil {
		return nil, nil, nil, err
	}
	cl, err := client.New(cfg)
	if err != nil {
		return nil, nil, nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	return cl, ctx, cancel, nil
}

func newFlagSet(name string, stderr io.Writer, usage string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: tsstore %s\n\nflags:\n", usage)
		fs.PrintDefaults()
	}
	return fs
}
