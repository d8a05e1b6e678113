package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	"github.com/tsstore/tsstore/internal/testpki"
	"github.com/tsstore/tsstore/proto/tsstorev1"
)

// authServer answers Status and remembers the authorization header.
type authServer struct {
	tsstorev1.UnimplementedEventStoreServer
	mu   sync.Mutex
	auth []string
}

func (s *authServer) Status(ctx context.Context, _ *tsstorev1.StatusRequest) (*tsstorev1.StatusResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	s.mu.Lock()
	s.auth = append(s.auth, md.Get("authorization")...)
	s.mu.Unlock()
	return &tsstorev1.StatusResponse{NodeId: "n1", Role: "leader"}, nil
}

func (s *authServer) seen() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.auth...)
}

// serveTLS serves an authServer on loopback, with TLS when cfg is set.
func serveTLS(t *testing.T, cfg *tls.Config) (string, *authServer) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var opts []grpc.ServerOption
	if cfg != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(cfg)))
	}
	srv := grpc.NewServer(opts...)
	as := &authServer{}
	tsstorev1.RegisterEventStoreServer(srv, as)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return lis.Addr().String(), as
}

func serverTLS(t *testing.T, pair testpki.Pair, clientCA *testpki.CA) *tls.Config {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(pair.CertFile, pair.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}}
	if clientCA != nil {
		cfg.ClientCAs = x509.NewCertPool()
		cfg.ClientCAs.AddCert(clientCA.Cert)
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg
}

func statusOnce(t *testing.T, cfg Config) error {
	t.Helper()
	cfg.MaxRetries = 0
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = c.Status(ctx)
	return err
}

// TLS with the right CA carries the token; a server the CA does not vouch
// for, or whose certificate expired, is refused with the reason.
func TestTLSClientVerifiesServerAndSendsToken(t *testing.T) {
	dir := t.TempDir()
	ca, other := testpki.NewCA(t, dir, "ca"), testpki.NewCA(t, dir, "other")
	addr, srv := serveTLS(t, serverTLS(t, ca.Issue(t, "node", testpki.Leaf{}.Loopback()), nil))

	good, err := LoadTLS(ca.CertFile, "", "", "")
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig(addr)
	cfg.TLS, cfg.Token = good, "secret-token-0123456789"
	if err := statusOnce(t, cfg); err != nil {
		t.Fatalf("Status over TLS: %v", err)
	}
	if got := srv.seen(); len(got) != 1 || got[0] != "Bearer secret-token-0123456789" {
		t.Fatalf("server saw authorization %q", got)
	}

	wrong, err := LoadTLS(other.CertFile, "", "", "")
	if err != nil {
		t.Fatal(err)
	}
	cfg.TLS = wrong
	if err := statusOnce(t, cfg); err == nil || !strings.Contains(err.Error(), "certificate signed by unknown authority") {
		t.Fatalf("server under another CA: %v", err)
	}

	expiredAddr, _ := serveTLS(t, serverTLS(t, ca.Issue(t, "old-node", testpki.Leaf{}.Loopback().Expired()), nil))
	cfg = DefaultConfig(expiredAddr)
	cfg.TLS = good
	if err := statusOnce(t, cfg); err == nil || !strings.Contains(err.Error(), "certificate has expired") {
		t.Fatalf("expired server certificate: %v", err)
	}

	named, err := LoadTLS(ca.CertFile, "", "", "db.example.com")
	if err != nil {
		t.Fatal(err)
	}
	cfg = DefaultConfig(addr)
	cfg.TLS = named
	if err := statusOnce(t, cfg); err == nil || !strings.Contains(err.Error(), "not db.example.com") {
		t.Fatalf("server name not in the certificate: %v", err)
	}
}

// A client certificate from LoadTLS satisfies a server that requires one.
func TestTLSClientCertificate(t *testing.T) {
	dir := t.TempDir()
	ca, clients := testpki.NewCA(t, dir, "ca"), testpki.NewCA(t, dir, "clients")
	addr, _ := serveTLS(t, serverTLS(t, ca.Issue(t, "node", testpki.Leaf{}.Loopback()), clients))
	me := clients.Issue(t, "trainer", testpki.Leaf{ClientOnly: true})
	cfg := DefaultConfig(addr)
	var err error
	if cfg.TLS, err = LoadTLS(ca.CertFile, me.CertFile, me.KeyFile, ""); err != nil {
		t.Fatal(err)
	}
	if err := statusOnce(t, cfg); err != nil {
		t.Fatalf("Status with a client certificate: %v", err)
	}
	cfg.TLS, _ = LoadTLS(ca.CertFile, "", "", "")
	if err := statusOnce(t, cfg); err == nil {
		t.Fatal("a server requiring client certificates accepted a client without one")
	}
}

// A token needs TLS unless InsecureToken says otherwise.
func TestTokenNeedsTLS(t *testing.T) {
	addr, srv := serveTLS(t, nil)
	cfg := DefaultConfig(addr)
	cfg.Token = "secret-token-0123456789"
	err := cfg.Validate()
	if err == nil || !strings.Contains(err.Error(), "Config.Token needs Config.TLS") {
		t.Fatalf("token without TLS: %v", err)
	}
	if _, err := New(cfg); err == nil {
		t.Fatal("New accepted a token without TLS")
	}
	cfg.InsecureToken = true
	if err := statusOnce(t, cfg); err != nil {
		t.Fatal(err)
	}
	if got := srv.seen(); len(got) != 1 || got[0] != "Bearer secret-token-0123456789" {
		t.Fatalf("server saw authorization %q", got)
	}
	cfg.Token = "two words"
	if err := cfg.Validate(); err == nil {
		t.Fatal("a token with white space was accepted")
	}
}

func TestTLSLoadRefusals(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.NewCA(t, dir, "ca")
	a, b := ca.Issue(t, "a", testpki.Leaf{}), ca.Issue(t, "b", testpki.Leaf{})
	notPEM := filepath.Join(dir, "x.pem")
	os.WriteFile(notPEM, []byte("nope"), 0o600)
	for _, tt := range []struct {
		name                  string
		ca, cert, key, wanted string
	}{
		{"missing CA file", filepath.Join(dir, "missing.crt"), "", "", "client: CA file: open"},
		{"CA not PEM", notPEM, "", "", "no PEM certificate"},
		{"cert without key", ca.CertFile, a.CertFile, "", "needs both the certificate and the key"},
		{"cert and key mismatch", ca.CertFile, a.CertFile, b.KeyFile, "private key does not match public key"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := LoadTLS(tt.ca, tt.cert, tt.key, "")
			if err == nil || !strings.Contains(err.Error(), tt.wanted) {
				t.Fatalf("got %v, want %q", err, tt.wanted)
			}
		})
	}
}

// When the caller's deadline ends the retries, the error still says why
// the attempts failed (here: a server the CA does not vouch for).
func TestTLSFailureReasonSurvivesDeadline(t *testing.T) {
	dir := t.TempDir()
	ca, other := testpki.NewCA(t, dir, "ca"), testpki.NewCA(t, dir, "other")
	addr, _ := serveTLS(t, serverTLS(t, other.Issue(t, "node", testpki.Leaf{}.Loopback()), nil))
	cfg := DefaultConfig(addr)
	cfg.MaxRetries = 1000
	var err error
	if cfg.TLS, err = LoadTLS(ca.CertFile, "", "", ""); err != nil {
		t.Fatal(err)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_, err = c.Status(ctx)
	if err == nil || !strings.Contains(err.Error(), "certificate signed by unknown authority") {
		t.Fatalf("got %v, want the TLS reason", err)
	}
}
