package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/tsstore/tsstore/internal/testpki"
	pb "github.com/tsstore/tsstore/proto/tsstorev1"
)

// testPeerName is the DNS name the test node certificates carry.
const testPeerName = "tsstore-test-peers"

// testPKI is a throwaway PKI: ca signs node and API certificates, other
// is a CA nobody trusts, clients signs client certificates.
type testPKI struct {
	dir                string
	ca, other, clients *testpki.CA
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	dir := t.TempDir()
	return &testPKI{dir: dir, ca: testpki.NewCA(t, dir, "ca"), other: testpki.NewCA(t, dir, "other"), clients: testpki.NewCA(t, dir, "clients")}
}

// nodeCert issues a node certificate: the peer name, plus loopback so the
// same certificate serves the API.
func (p *testPKI) nodeCert(t *testing.T, ca *testpki.CA, id string) testpki.Pair {
	return ca.Issue(t, id+"-"+ca.Name, testpki.Leaf{DNSNames: []string{testPeerName}}.Loopback())
}

// trust returns a client TLS config trusting ca.
func trust(t *testing.T, ca *testpki.CA, client *testpki.Pair) *tls.Config {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if client != nil {
		cert, err := tls.LoadX509KeyPair(client.CertFile, client.KeyFile)
		if err != nil {
			t.Fatal(err)
		}
		// Always offer it: Go would otherwise send none when it does not
		// chain to a CA the server asks for.
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
	}
	return cfg
}

// logBuf collects a node's logs for assertions.
type logBuf struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuf) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(b)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// waitLog waits until the log holds want.
func (l *logBuf) waitLog(t *testing.T, want string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(l.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("log never showed %q:\n%s", want, l.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// secure configures cfg with node certificates from p.ca (API TLS too when
// api is set) and returns the node's log.
func (p *testPKI) secure(t *testing.T, cfg *Config, api bool) *logBuf {
	cert := p.nodeCert(t, p.ca, cfg.NodeID)
	cfg.TLS.PeerCertFile, cfg.TLS.PeerKeyFile, cfg.TLS.PeerCAFile = cert.CertFile, cert.KeyFile, p.ca.CertFile
	cfg.TLS.PeerName = testPeerName
	if api {
		cfg.TLS.CertFile, cfg.TLS.KeyFile = cert.CertFile, cert.KeyFile
	}
	lb := &logBuf{}
	cfg.Logger = slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelInfo}))
	return lb
}

func dialWith(t *testing.T, addr string, creds credentials.TransportCredentials) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func wantStatus(t *testing.T, err error, code codes.Code, msg string) {
	t.Helper()
	if status.Code(err) != code || !strings.Contains(err.Error(), msg) {
		t.Fatalf("got %v, want %v containing %q", err, code, msg)
	}
}

func shortCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// A TLS API refuses plaintext clients and clients that do not trust its
// CA; both ends say why.
func TestTLSClientRefusals(t *testing.T) {
	p := newTestPKI(t)
	var logs *logBuf
	tc := newTestCluster(t, 1, func(c *Config) { logs = p.secure(t, c, true) })
	addr := tc.nodes[0].APIAddr()

	_, err := pb.NewEventStoreClient(dialWith(t, addr, insecure.NewCredentials())).Status(shortCtx(t), &pb.StatusRequest{})
	wantStatus(t, err, codes.Unavailable, "")
	logs.waitLog(t, "first record does not look like a TLS handshake")

	_, err = pb.NewEventStoreClient(dialWith(t, addr, credentials.NewTLS(trust(t, p.other, nil)))).Status(shortCtx(t), &pb.StatusRequest{})
	wantStatus(t, err, codes.Unavailable, "certificate signed by unknown authority")

	wrongName := trust(t, p.ca, nil)
	wrongName.ServerName = "db.example.com"
	_, err = pb.NewEventStoreClient(dialWith(t, addr, credentials.NewTLS(wrongName))).Status(shortCtx(t), &pb.StatusRequest{})
	wantStatus(t, err, codes.Unavailable, "not db.example.com")

	st, err := pb.NewEventStoreClient(dialWith(t, addr, credentials.NewTLS(trust(t, p.ca, nil)))).Status(shortCtx(t), &pb.StatusRequest{})
	if err != nil || st.NodeId != "n1" {
		t.Fatalf("Status over TLS: %v %v", st, err)
	}
}

// With tls-client-ca, the API completes the handshake only with a client
// certificate from that CA that has not expired; a client certificate
// cannot pass for a node's either.
func TestTLSClientCertRefusals(t *testing.T) {
	p := newTestPKI(t)
	var logs *logBuf
	tc := newTestCluster(t, 1, func(c *Config) {
		logs = p.secure(t, c, true)
		c.TLS.ClientCAFile = p.clients.CertFile
	})
	addr := tc.nodes[0].APIAddr()
	good := p.clients.Issue(t, "trainer", testpki.Leaf{ClientOnly: true})
	foreign := p.other.Issue(t, "intruder", testpki.Leaf{ClientOnly: true})
	expired := p.clients.Issue(t, "old-trainer", testpki.Leaf{ClientOnly: true}.Expired())

	for _, tt := range []struct {
		name      string
		cert      *testpki.Pair
		serverLog string
	}{
		{"no client certificate", nil, "client didn't provide a certificate"},
		{"client certificate from another CA", &foreign, "certificate signed by unknown authority"},
		{"expired client certificate", &expired, "certificate has expired"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			conn := dialWith(t, addr, credentials.NewTLS(trust(t, p.ca, tt.cert)))
			_, err := pb.NewEventStoreClient(conn).Status(shortCtx(t), &pb.StatusRequest{})
			// TLS 1.3 clients finish their side of the handshake before the
			// server checks their certificate, so the client may see the
			// alert or just a closed connection; the server's log says why.
			wantStatus(t, err, codes.Unavailable, "")
			logs.waitLog(t, tt.serverLog)
		})
	}

	// A client certificate offered under the peer name meets the peer CA.
	const unknown = "certificate signed by unknown authority"
	before := strings.Count(logs.String(), unknown)
	asPeer := trust(t, p.ca, &good)
	asPeer.ServerName = testPeerName
	_, err := pb.NewEventStoreClient(dialWith(t, addr, credentials.NewTLS(asPeer))).Status(shortCtx(t), &pb.StatusRequest{})
	wantStatus(t, err, codes.Unavailable, "")
	for deadline := time.Now().Add(20 * time.Second); strings.Count(logs.String(), unknown) == before; {
		if time.Now().After(deadline) {
			t.Fatalf("a client certificate under the peer name was not refused for its CA:\n%s", logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}

	st, err := pb.NewEventStoreClient(dialWith(t, addr, credentials.NewTLS(trust(t, p.ca, &good)))).Status(shortCtx(t), &pb.StatusRequest{})
	if err != nil || st.NodeId != "n1" {
		t.Fatalf("Status with a valid client certificate: %v %v", st, err)
	}
}

// tcpProxy forwards every connection to target and counts them.
type tcpProxy struct {
	ln    net.Listener
	conns atomic.Int64
}

func newTCPProxy(t *testing.T, target string) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{ln: ln}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var open []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			p.conns.Add(1)
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			mu.Lock()
			open = append(open, in, out)
			mu.Unlock()
			wg.Add(2)
			go func() { defer wg.Done(); io.Copy(out, in); out.Close() }()
			go func() { defer wg.Done(); io.Copy(in, out); in.Close() }()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range open {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return p
}

// Raft runs over mutual TLS: two nodes with certificates from the cluster
// CA form a quorum and replicate, end to end through TCP proxies (the
// fault-injection harness's dial overrides), while a third node whose
// certificate comes from another CA is refused by both and never learns a
// leader or an entry.
func TestTLSRaftPeerFromForeignCA(t *testing.T) {
	p := newTestPKI(t)
	addrs := freeAddrs(t, 6)
	peers := []Peer{{"n1", addrs[0]}, {"n2", addrs[2]}, {"n3", addrs[4]}}
	proxy1, proxy2 := newTCPProxy(t, addrs[0]), newTCPProxy(t, addrs[2])
	overrides := map[string]map[string]string{
		"n1": {"n1": addrs[0], "n2": proxy2.ln.Addr().String(), "n3": addrs[4]},
		"n2": {"n1": proxy1.ln.Addr().String(), "n2": addrs[2], "n3": addrs[4]},
		"n3": {"n1": addrs[0], "n2": addrs[2], "n3": addrs[4]},
	}
	nodes := map[string]*Node{}
	logs := map[string]*logBuf{}
	for i, peer := range peers {
		cfg := DefaultConfig()
		cfg.NodeID, cfg.DataDir, cfg.RaftAddr, cfg.APIAddr = peer.ID, t.TempDir(), peer.RaftAddr, addrs[2*i+1]
		cfg.Bootstrap = peers
		cfg.RaftDialOverrides = overrides[peer.ID]
		cfg.HeartbeatTimeout, cfg.ElectionTimeout, cfg.LeaderLeaseTimeout = 200*time.Millisecond, 200*time.Millisecond, 100*time.Millisecond
		logs[peer.ID] = p.secure(t, &cfg, false)
		if peer.ID == "n3" {
			cert := p.nodeCert(t, p.other, "n3")
			cfg.TLS.PeerCertFile, cfg.TLS.PeerKeyFile, cfg.TLS.PeerCAFile = cert.CertFile, cert.KeyFile, p.other.CertFile
		}
		n, err := New(cfg)
		if err != nil {
			t.Fatalf("starting %s: %v", peer.ID, err)
		}
		nodes[peer.ID] = n
		t.Cleanup(func() { n.Close() })
	}

	// A leader among n1 and n2, ready, with its API address registered.
	var leader, follower *Node
	deadline := time.Now().Add(20 * time.Second)
	for leader == nil {
		if time.Now().After(deadline) {
			t.Fatal("n1 and n2 elected no leader over mutual TLS")
		}
		for _, id := range []string{"n1", "n2"} {
			n := nodes[id]
			if n.raft.State() == raft.Leader && n.leaderReady.Load() == n.raft.CurrentTerm() && n.proc.Nodes()[id] != "" {
				leader = n
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	follower = nodes["n1"]
	if leader == follower {
		follower = nodes["n2"]
	}
	var resp *pb.AppendResponse
	err := retryUnavailable(ctxT(t), func() (err error) {
		resp, err = dial(t, leader).Append(ctxT(t), oneEvent())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := follower.proc.WaitApplied(ctxT(t), resp.RaftIndex); err != nil {
		t.Fatalf("follower %s did not apply the entry: %v", follower.cfg.NodeID, err)
	}
	if proxy1.conns.Load()+proxy2.conns.Load() == 0 {
		t.Fatal("raft traffic between n1 and n2 did not use the proxies")
	}

	// The leader dials n3 and rejects its certificate; n3 logs the refusal
	// of its own handshakes, and never gets anything.
	logs[leader.cfg.NodeID].waitLog(t, "raft peer TLS handshake failed")
	logs[leader.cfg.NodeID].waitLog(t, "certificate signed by unknown authority")
	logs["n3"].waitLog(t, "raft peer TLS handshake failed")
	n3 := nodes["n3"]
	if _, id := n3.raft.LeaderWithID(); id != "" || n3.raft.State() == raft.Leader {
		t.Fatalf("n3 with a foreign certificate knows leader %q (state %v)", id, n3.raft.State())
	}
	if n3.proc.NextOffset() != 0 || n3.raft.LastIndex() > 1 {
		t.Fatalf("n3 received data: next offset %d, last raft index %d", n3.proc.NextOffset(), n3.raft.LastIndex())
	}
	if serving, reason := n3.Health(); serving {
		t.Fatalf("n3 reports SERVING (%s)", reason)
	}
	if follower.proc.NextOffset() < 1 {
		t.Fatalf("follower next offset %d, want the appended event", follower.proc.NextOffset())
	}
}

// Every way a TLS configuration can be wrong is refused at start (and by
// --check-config) with a message that names the setting and the problem.
func TestTLSConfigRefusals(t *testing.T) {
	p := newTestPKI(t)
	node := p.nodeCert(t, p.ca, "n1")
	otherNode := p.nodeCert(t, p.other, "n1")
	expired := p.ca.Issue(t, "expired", testpki.Leaf{DNSNames: []string{testPeerName}}.Expired())
	noName := p.ca.Issue(t, "noname", testpki.Leaf{DNSNames: []string{"something-else"}})
	serverOnly := p.ca.Issue(t, "serveronly", testpki.Leaf{DNSNames: []string{testPeerName}, ServerOnly: true})
	worldKey := filepath.Join(p.dir, "world.key")
	if b, err := os.ReadFile(node.KeyFile); err != nil || os.WriteFile(worldKey, b, 0o644) != nil || os.Chmod(worldKey, 0o644) != nil {
		t.Fatal("copying the key", err)
	}
	notPEM := filepath.Join(p.dir, "not.pem")
	os.WriteFile(notPEM, []byte("hello\n"), 0o644)
	tokens := writeTokens(t, "append trainer 0123456789abcdef0123\n")

	base := func() Config {
		c := DefaultConfig()
		c.NodeID, c.DataDir, c.RaftAddr, c.APIAddr = "n1", t.TempDir(), "127.0.0.1:1", "127.0.0.1:2"
		c.TLS = TLSConfig{CertFile: node.CertFile, KeyFile: node.KeyFile, PeerCertFile: node.CertFile,
			PeerKeyFile: node.KeyFile, PeerCAFile: p.ca.CertFile, PeerName: testPeerName}
		c.AuthTokensFile = tokens
		return c
	}
	if err := base().Validate(); err != nil {
		t.Fatalf("valid security config refused: %v", err)
	}
	for _, tt := range []struct {
		name   string
		mutate func(*Config)
		want   string
	}{
		{"missing key file", func(c *Config) { c.TLS.KeyFile = filepath.Join(p.dir, "nope.key") }, "tls-key: stat " + filepath.Join(p.dir, "nope.key") + ": no such file"},
		{"world-readable key", func(c *Config) { c.TLS.KeyFile = worldKey }, "tls-key " + worldKey + " is readable by every user (mode 0644)"},
		{"world-readable peer key", func(c *Config) { c.TLS.PeerKeyFile = worldKey }, "peer-tls-key " + worldKey + " is readable by every user"},
		{"missing peer cert file", func(c *Config) { c.TLS.PeerCertFile = filepath.Join(p.dir, "nope.crt") }, "peer-tls-cert: stat"},
		{"cert and key do not match", func(c *Config) { c.TLS.KeyFile = otherNode.KeyFile }, "private key does not match public key"},
		{"expired api certificate", func(c *Config) { c.TLS.CertFile, c.TLS.KeyFile = expired.CertFile, expired.KeyFile }, "tls-cert " + expired.CertFile + ` ("expired") expired at`},
		{"expired peer certificate", func(c *Config) { c.TLS.PeerCertFile, c.TLS.PeerKeyFile = expired.CertFile, expired.KeyFile }, "peer-tls-cert " + expired.CertFile + ` ("expired") expired at`},
		{"peer certificate from another CA", func(c *Config) { c.TLS.PeerCertFile, c.TLS.PeerKeyFile = otherNode.CertFile, otherNode.KeyFile }, "is not a valid node certificate under peer-tls-ca"},
		{"peer certificate without the peer name", func(c *Config) { c.TLS.PeerCertFile, c.TLS.PeerKeyFile = noName.CertFile, noName.KeyFile }, `does not carry the peer name "` + testPeerName + `"`},
		{"peer certificate without client auth", func(c *Config) { c.TLS.PeerCertFile, c.TLS.PeerKeyFile = serverOnly.CertFile, serverOnly.KeyFile }, "incompatible key usage"},
		{"peer name defaults to the cluster name", func(c *Config) { c.TLS.PeerName = "" }, `does not carry the peer name "tsstore"`},
		{"peer CA not PEM", func(c *Config) { c.TLS.PeerCAFile = notPEM }, "peer-tls-ca " + notPEM + ": no PEM certificate"},
		{"client CA missing", func(c *Config) { c.TLS.ClientCAFile = filepath.Join(p.dir, "nope-ca.crt") }, "tls-client-ca: open"},
		{"partial peer TLS", func(c *Config) { c.TLS.PeerCAFile = "" }, "peer-tls-cert, peer-tls-key and peer-tls-ca go together"},
		{"cert without key", func(c *Config) { c.TLS.KeyFile = "" }, "tls-cert and tls-key go together"},
		{"api TLS without peer TLS", func(c *Config) { c.TLS.PeerCertFile, c.TLS.PeerKeyFile, c.TLS.PeerCAFile = "", "", "" }, "tls-cert needs peer TLS too"},
		{"tokens without TLS", func(c *Config) { c.TLS.CertFile, c.TLS.KeyFile = "", "" }, "auth-tokens-file needs tls-cert and tls-key"},
		{"client CA without TLS", func(c *Config) {
			c.TLS.CertFile, c.TLS.KeyFile, c.AuthTokensFile, c.TLS.ClientCAFile = "", "", "", p.clients.CertFile
		}, "tls-client-ca needs tls-cert"},
		{"tokens file missing", func(c *Config) { c.AuthTokensFile = filepath.Join(p.dir, "tokens") }, "auth-tokens-file: open"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := base()
			tt.mutate(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error containing %q", err, tt.want)
			}
			if _, err := New(c); err == nil {
				t.Fatal("New accepted the config")
			}
		})
	}
}

// checkMetric finds grpc_server_handled_total for a method and code.
func handledTotal(t *testing.T, n *Node, method, code string) float64 {
	t.Helper()
	mfs, err := n.metrics.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "grpc_server_handled_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["grpc_method"] == method && labels["grpc_code"] == code {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// servedSerial is the serial of the certificate a TLS server at addr
// presents under serverName, to a client holding client (may be nil).
func servedSerial(t *testing.T, p *testPKI, addr, serverName string, client *testpki.Pair) string {
	t.Helper()
	cfg := trust(t, p.ca, client)
	cfg.ServerName = serverName
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		t.Fatalf("TLS dial %s as %q: %v", addr, serverName, err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].SerialNumber.String()
}

// ReloadSecurity swaps certificates and tokens for new handshakes and
// calls, on the API and the Raft port; a broken file changes nothing and
// says what is wrong.
func TestTLSReloadCertificatesAndTokens(t *testing.T) {
	p := newTestPKI(t)
	tokens := testTokens(t)
	var logs *logBuf
	tc := newTestCluster(t, 1, func(c *Config) { logs = p.secure(t, c, true); c.AuthTokensFile = tokens })
	n, cfg := tc.nodes[0], tc.cfgs[0]
	node := testpki.Pair{CertFile: cfg.TLS.PeerCertFile, KeyFile: cfg.TLS.PeerKeyFile}
	apiBefore := servedSerial(t, p, n.APIAddr(), "localhost", nil)
	raftBefore := servedSerial(t, p, cfg.RaftAddr, testPeerName, &node)

	rotated := p.nodeCert(t, p.ca, "n1") // rewrites the same files
	if err := os.WriteFile(tokens, []byte("read dashboard "+readTok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := n.ReloadSecurity(); err != nil {
		t.Fatal(err)
	}
	want := rotated.Cert.SerialNumber.String()
	if got := servedSerial(t, p, n.APIAddr(), "localhost", nil); got != want || got == apiBefore {
		t.Fatalf("API serves certificate %s after reload, want %s (before %s)", got, want, apiBefore)
	}
	if got := servedSerial(t, p, cfg.RaftAddr, testPeerName, &node); got != want || got == raftBefore {
		t.Fatalf("Raft port serves certificate %s after reload, want %s (before %s)", got, want, raftBefore)
	}
	es := pb.NewEventStoreClient(dialWith(t, n.APIAddr(), credentials.NewTLS(trust(t, p.ca, nil))))
	_, err := es.Append(withToken(ctxT(t), appendTok), oneEvent())
	wantStatus(t, err, codes.Unauthenticated, "not in this node's tokens file")
	if _, err := es.Status(withToken(ctxT(t), readTok), &pb.StatusRequest{}); err != nil {
		t.Fatal(err)
	}

	if err := os.WriteFile(cfg.TLS.PeerKeyFile, []byte("not a key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	err = n.ReloadSecurity()
	if err == nil || !strings.Contains(err.Error(), "peer-tls-key") {
		t.Fatalf("reload with a broken key: %v", err)
	}
	logs.waitLog(t, "security reload failed; keeping the current certificates and tokens")
	if got := servedSerial(t, p, n.APIAddr(), "localhost", nil); got != want {
		t.Fatalf("a failed reload changed the API certificate to %s", got)
	}
	if _, err := es.Status(withToken(ctxT(t), readTok), &pb.StatusRequest{}); err != nil {
		t.Fatal(err)
	}
}
