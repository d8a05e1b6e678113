package main

import (
	"bytes"
	"errors"
	"github.com/spf13/pflag"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tsstore/tsstore/client"
	"github.com/tsstore/tsstore/internal/testpki"
)

// securityFiles makes a CA, a node certificate carrying the cluster name
// as peer name, and a tokens file.
func securityFiles(t *testing.T) (dir string, ca *testpki.CA, node testpki.Pair, tokens string) {
	t.Helper()
	dir = t.TempDir()
	ca = testpki.NewCA(t, dir, "ca")
	node = ca.Issue(t, "n1", testpki.Leaf{DNSNames: []string{"rack-a"}}.Loopback())
	tokens = filepath.Join(dir, "tokens")
	if err := os.WriteFile(tokens, []byte("append trainer 0123456789abcdef0123\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir, ca, node, tokens
}

// The security keys work in the TOML file and the environment like every
// other setting; a misspelt one is refused by name.
func TestServeSecurityConfigKeys(t *testing.T) {
	dir, ca, node, tokens := securityFiles(t)
	file := filepath.Join(dir, "tsstore.toml")
	os.WriteFile(file, []byte(`
id = "n1"
cluster = "rack-a"
data_dir = "`+dir+`/data"
raft_addr = "127.0.0.1:7001"
api_addr = "127.0.0.1:7201"
tls_cert = "`+node.CertFile+`"
tls_key = "`+node.KeyFile+`"
peer_tls_cert = "`+node.CertFile+`"
peer_tls_key = "`+node.KeyFile+`"
peer_tls_ca = "`+ca.CertFile+`"
`), 0o644)
	t.Setenv("TSSTORE_AUTH_TOKENS_FILE", tokens)
	s := newTestServeFlags()
	if err := s.parse([]string{"--config", file}); err != nil {
		t.Fatal(err)
	}
	c := s.cfg
	if c.TLS.CertFile != node.CertFile || c.TLS.PeerCAFile != ca.CertFile || c.AuthTokensFile != tokens {
		t.Fatalf("security settings not applied: %+v, tokens %q", c.TLS, c.AuthTokensFile)
	}

	os.WriteFile(file, []byte("id = \"n1\"\ntls_cret = \"/etc/tsstore/node.crt\"\n"), 0o644)
	err := newTestServeFlags().parse([]string{"--config", file})
	if err == nil || !strings.Contains(err.Error(), "unknown keys tls_cret") {
		t.Fatalf("typo in a security key: %v", err)
	}
}

// --check-config loads every certificate, key, CA and tokens file and
// says what is wrong with them.
func TestServeCheckConfigSecurityRefusals(t *testing.T) {
	dir, ca, node, tokens := securityFiles(t)
	other := testpki.NewCA(t, dir, "other").Issue(t, "n1-other", testpki.Leaf{DNSNames: []string{"rack-a"}})
	args := func(extra ...string) []string {
		return append([]string{"serve", "--check-config", "--id", "n1", "--cluster", "rack-a", "--data-dir", dir,
			"--raft-addr", "127.0.0.1:1", "--api-addr", "127.0.0.1:2",
			"--tls-cert", node.CertFile, "--tls-key", node.KeyFile,
			"--peer-tls-cert", node.CertFile, "--peer-tls-key", node.KeyFile, "--peer-tls-ca", ca.CertFile,
			"--auth-tokens-file", tokens}, extra...)
	}
	var out, errOut bytes.Buffer
	if code := run(args(), &out, &errOut); code != 0 || !strings.Contains(out.String(), "configuration ok") {
		t.Fatalf("valid security config: exit %d, %q", code, errOut.String())
	}
	for _, tt := range []struct {
		name  string
		extra []string
		want  string
	}{
		{"missing key file", []string{"--tls-key", filepath.Join(dir, "missing.key")}, "tls-key: stat " + filepath.Join(dir, "missing.key") + ": no such file or directory"},
		{"cert and key mismatch", []string{"--tls-key", other.KeyFile}, "private key does not match public key"},
		{"peer certificate from another CA", []string{"--peer-tls-cert", other.CertFile, "--peer-tls-key", other.KeyFile}, "is not a valid node certificate under peer-tls-ca"},
		{"wrong peer name", []string{"--peer-tls-name", "rack-b"}, `does not carry the peer name "rack-b"`},
		{"tokens file missing", []string{"--auth-tokens-file", filepath.Join(dir, "nope")}, "auth-tokens-file: open"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out.Reset()
			errOut.Reset()
			if code := run(args(tt.extra...), &out, &errOut); code == 0 || !strings.Contains(errOut.String(), tt.want) {
				t.Fatalf("exit %d, stderr %q, want %q", code, errOut.String(), tt.want)
			}
		})
	}
}

// Client commands take TLS files from flags or the environment and the
// token preferably from TSSTORE_TOKEN; a token without TLS is refused, and
// -h never prints a token.
func TestClientSecurityFlags(t *testing.T) {
	_, ca, _, _ := securityFiles(t)
	parse := func(args ...string) (*client.Config, error) {
		var cf clientFlags
		fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
		cf.register(fs)
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		cfg := client.DefaultConfig("127.0.0.1:1")
		return &cfg, cf.sec.apply(&cfg)
	}
	t.Setenv("TSSTORE_TOKEN", "env-token-0123456789")
	cfg, err := parse("--ca", ca.CertFile)
	if err != nil || cfg.TLS == nil || cfg.TLS.RootCAs == nil || cfg.Token != "env-token-0123456789" {
		t.Fatalf("--ca with TSSTORE_TOKEN: %+v, %v", cfg, err)
	}
	if cfg, err = parse("--ca", ca.CertFile, "--token", "flag-token-0123456789"); err != nil || cfg.Token != "flag-token-0123456789" {
		t.Fatalf("--token does not win over TSSTORE_TOKEN: %v", err)
	}
	if _, err := parse(); err == nil || !strings.Contains(err.Error(), "a token needs TLS") {
		t.Fatalf("token without TLS: %v", err)
	}
	t.Setenv("TSSTORE_CA", ca.CertFile)
	if cfg, err = parse(); err != nil || cfg.TLS == nil {
		t.Fatalf("TSSTORE_CA: %v", err)
	}
	if _, err := parse("--ca", filepath.Join(t.TempDir(), "missing.crt")); err == nil || !strings.Contains(err.Error(), "CA file") {
		t.Fatalf("missing CA file: %v", err)
	}

	var out, errOut bytes.Buffer
	run([]string{"status", "-h"}, &out, &errOut)
	if !strings.Contains(out.String(), "--token") || strings.Contains(out.String(), "env-token") {
		t.Fatalf("status -h:\n%s", out.String())
	}
}

// A refusal comes with a hint on what to do about it.
func TestSecurityHints(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want string
	}{
		{status.Error(codes.Unauthenticated, "needs a bearer token"), "set TSSTORE_TOKEN"},
		{status.Error(codes.PermissionDenied, `token "x" has role read`), "role is too low"},
		{status.Error(codes.Unavailable, `connection error: desc = "error reading server preface: EOF"`), "pass --ca"},
		{status.Error(codes.Unavailable, "tls: failed to verify certificate: x509: certificate signed by unknown authority"), "--ca must be the CA bundle"},
		{status.Error(codes.Unavailable, "other"), ""},
		{errors.New(`peer-tls-cert n1.crt does not carry the peer name: x509: certificate is valid for rack-a, not rack-b`), ""},
	} {
		if got := securityHint(tt.err); !strings.Contains(got, tt.want) || (tt.want == "" && got != "") {
			t.Errorf("securityHint(%v) = %q, want %q", tt.err, got, tt.want)
		}
	}

	// End to end: TLS towards a plaintext server.
	_, ca, _, _ := securityFiles(t)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	go srv.Serve(lis)
	defer srv.Stop()
	var out, errOut bytes.Buffer
	code := run([]string{"status", "--addr", lis.Addr().String(), "--ca", ca.CertFile, "--timeout", "2s"}, &out, &errOut)
	if code == 0 || !strings.Contains(errOut.String(), "first record does not look like a TLS handshake") ||
		!strings.Contains(errOut.String(), "hint: the server does not use TLS") {
		t.Fatalf("exit %d, stderr:\n%s", code, errOut.String())
	}
}
