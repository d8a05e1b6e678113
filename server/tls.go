package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/credentials"
)

// TLSConfig names a node's certificate files (PEM). Empty fields turn the
// feature off; the zero value is plaintext everywhere, as `tsstore dev`
// runs. docs/operations.md#security shows how to make the files.
//
// Rules (Config.Validate checks them and loads every file):
//   - peer TLS (PeerCertFile, PeerKeyFile, PeerCAFile, all three) is mutual
//     TLS between nodes: the Raft transport and, when the API has TLS too,
//     the node-to-node gRPC calls (forwarded appends, ReadIndex, node
//     registration). Both ends present their node certificate; each
//     verifies the other's against PeerCAFile and requires the DNS name
//     PeerName in it. The address dialled is never checked, so Raft
//     traffic may pass through TCP proxies (RaftDialOverrides).
//   - API TLS (CertFile, KeyFile) requires peer TLS: Raft carries every
//     event, so TLS for clients alone would leave the data in clear.
//   - ClientCAFile requires API TLS and makes client certificates
//     mandatory (mutual TLS for clients).
//
// Node.ReloadSecurity (SIGHUP) reads the files again; which layers are
// on is fixed at start.
type TLSConfig struct {
	// CertFile and KeyFile are the certificate (chain) and key the gRPC API
	// presents to clients.
	CertFile, KeyFile string
	// ClientCAFile, if set, is the CA bundle client certificates must chain
	// to; clients without one are refused in the handshake.
	ClientCAFile string
	// PeerCertFile and PeerKeyFile are this node's certificate and key
	// towards other nodes, used as server and as client: the certificate
	// needs both serverAuth and clientAuth extended key usages and the DNS
	// name PeerName.
	PeerCertFile, PeerKeyFile string
	// PeerCAFile is the CA bundle node certificates must chain to.
	PeerCAFile string
	// PeerName is the DNS name every node certificate carries; empty means
	// the cluster name. It is also the TLS server name nodes send when they
	// call each other's API, which is how a node's API tells a node from a
	// client, so it must not be a name clients use.
	PeerName string
}

// tlsMinVersion: TLS 1.2 at least; Go negotiates 1.3 whenever both ends
// support it.
const tlsMinVersion = tls.VersionTLS12

// peerHandshakeTimeout bounds the TLS handshake of an accepted Raft
// connection.
const peerHandshakeTimeout = 10 * time.Second

// security is a node's loaded TLS and authentication setup. Which layers
// are on is fixed at start; ReloadSecurity swaps the certificates, CAs and
// tokens underneath, for the next handshake and the next call.
type security struct {
	// api is the API listener's root configuration, nil for plaintext. It
	// serves the peer identity to peers (by TLS server name) and the
	// client-facing certificate to everyone else.
	api *tls.Config
	// peerServer is the root configuration of the Raft listener, nil
	// without peer TLS.
	peerServer *tls.Config
	peerName   string
	// clientCerts: the API requires client certificates.
	clientCerts bool
	// tokens enables bearer-token authentication; nil: none (auth.go).
	tokens *tokenSet
	// state holds the current configurations the roots pick from.
	state atomic.Pointer[tlsState]
}

// tlsState is one loading of the certificate files.
type tlsState struct {
	clients    *tls.Config // the API, for clients
	peerAPI    *tls.Config // the API, for nodes (peerServer with h2)
	peerServer *tls.Config // the Raft listener
	peerClient *tls.Config // Raft dials and node-to-node gRPC calls
}

// logAttrs describe what is on, for the start-up log.
func (s *security) logAttrs() []any {
	tokens := 0
	if s.tokens != nil {
		tokens = len(*s.tokens.list.Load())
	}
	return []any{"peer_mtls", s.peerServer != nil, "peer_name", s.peerName, "api_tls", s.api != nil,
		"client_certs", s.clientCerts, "auth_tokens", tokens}
}

func (t TLSConfig) peerName(cluster string) string {
	if t.PeerName != "" {
		return t.PeerName
	}
	return cluster
}

// loadSecurity checks the TLS and authentication settings and loads every
// file they name. Errors name the setting (by its flag name) and the file.
func (c Config) loadSecurity() (*security, error) {
	t := c.TLS
	var errs []error
	if (t.CertFile == "") != (t.KeyFile == "") {
		errs = append(errs, errors.New("tls-cert and tls-key go together: set both or neither"))
	}
	peerFiles := 0
	for _, f := range []string{t.PeerCertFile, t.PeerKeyFile, t.PeerCAFile} {
		if f != "" {
			peerFiles++
		}
	}
	if peerFiles != 0 && peerFiles != 3 {
		errs = append(errs, errors.New("peer-tls-cert, peer-tls-key and peer-tls-ca go together: set all three or none"))
	}
	if t.ClientCAFile != "" && t.CertFile == "" {
		errs = append(errs, errors.New("tls-client-ca needs tls-cert and tls-key: client certificates are checked in the API's TLS handshake"))
	}
	if t.CertFile != "" && peerFiles == 0 {
		errs = append(errs, errors.New("tls-cert needs peer TLS too (peer-tls-cert, peer-tls-key, peer-tls-ca): "+
			"Raft traffic between nodes carries every event and would otherwise stay in clear"))
	}
	if c.AuthTokensFile != "" && t.CertFile == "" {
		errs = append(errs, errors.New("auth-tokens-file needs tls-cert and tls-key: bearer tokens must not cross the network in clear"))
	}
	if t.PeerName != "" && !idPattern.MatchString(t.PeerName) {
		errs = append(errs, fmt.Errorf("peer-tls-name %q: want 1-64 of [A-Za-z0-9._-]", t.PeerName))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	s := &security{peerName: t.peerName(c.ClusterName)}
	st := &tlsState{}
	if peerFiles == 3 {
		if err := s.loadPeer(t, st); err != nil {
			errs = append(errs, err)
		}
	}
	if t.CertFile != "" {
		if err := s.loadAPI(t, st); err != nil {
			errs = append(errs, err)
		}
	}
	s.state.Store(st)
	if c.AuthTokensFile != "" {
		var err error
		if s.tokens, err = loadTokens(c.AuthTokensFile); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return s, nil
}

func (s *security) loadPeer(t TLSConfig, st *tlsState) error {
	cert, err := loadPair("peer-tls-cert", t.PeerCertFile, "peer-tls-key", t.PeerKeyFile)
	if err != nil {
		return err
	}
	pool, err := loadCA("peer-tls-ca", t.PeerCAFile)
	if err != nil {
		return err
	}
	// A node certificate that this node's own CA and name rule reject
	// would be refused by every peer; say so now rather than in their logs.
	leaf := cert.Leaf
	inter := x509.NewCertPool()
	for _, der := range cert.Certificate[1:] {
		if c, err := x509.ParseCertificate(der); err == nil {
			inter.AddCert(c)
		}
	}
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
			return fmt.Errorf("peer-tls-cert %s is not a valid node certificate under peer-tls-ca %s: %w", t.PeerCertFile, t.PeerCAFile, err)
		}
	}
	if err := leaf.VerifyHostname(s.peerName); err != nil {
		return fmt.Errorf("peer-tls-cert %s does not carry the peer name %q as a DNS name (set peer-tls-name, or issue the certificate with that SAN): %w",
			t.PeerCertFile, s.peerName, err)
	}
	name := s.peerName
	st.peerServer = &tls.Config{
		MinVersion:   tlsMinVersion,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		// The chain is verified by then; the name rule is ours.
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("peer presented no certificate")
			}
			if err := cs.PeerCertificates[0].VerifyHostname(name); err != nil {
				return fmt.Errorf("peer certificate %q lacks the peer name %q: %w", cs.PeerCertificates[0].Subject.CommonName, name, err)
			}
			return nil
		},
	}
	st.peerClient = &tls.Config{
		MinVersion:   tlsMinVersion,
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
		ServerName:   name,
	}
	s.peerServer = &tls.Config{
		MinVersion: tlsMinVersion,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return s.state.Load().peerServer, nil
		},
	}
	return nil
}

func (s *security) loadAPI(t TLSConfig, st *tlsState) error {
	cert, err := loadPair("tls-cert", t.CertFile, "tls-key", t.KeyFile)
	if err != nil {
		return err
	}
	clients := &tls.Config{
		MinVersion:   tlsMinVersion,
		Certificates: []tls.Certificate{cert},
		NextProtos:   []string{"h2"},
	}
	if t.ClientCAFile != "" {
		pool, err := loadCA("tls-client-ca", t.ClientCAFile)
		if err != nil {
			return err
		}
		clients.ClientAuth = tls.RequireAndVerifyClientCert
		clients.ClientCAs = pool
		s.clientCerts = true
	}
	st.clients = clients
	if st.peerServer != nil {
		st.peerAPI = st.peerServer.Clone()
		st.peerAPI.NextProtos = []string{"h2"}
	}
	name := s.peerName
	s.api = &tls.Config{
		MinVersion: tlsMinVersion,
		NextProtos: []string{"h2"},
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			cur := s.state.Load()
			if cur.peerAPI != nil && hello.ServerName == name {
				return cur.peerAPI, nil
			}
			return cur.clients, nil
		},
	}
	return nil
}

// ReloadSecurity reads the certificate, key, CA and tokens files named in
// the configuration again (the serve command does on SIGHUP). New
// handshakes and calls use them; established connections keep theirs.
// Which layers are on and the file names are fixed until a restart. If
// any file is wrong, nothing changes and the error says why.
func (n *Node) ReloadSecurity() error {
	fresh, err := n.cfg.loadSecurity()
	if err == nil {
		err = n.sec.reload(fresh)
	}
	if err != nil {
		n.logger.Warn("security reload failed; keeping the current certificates and tokens", "error", err)
		return err
	}
	n.logger.Info("security reloaded", n.sec.logAttrs()...)
	return nil
}

// reload takes fresh's certificates and tokens.
func (s *security) reload(fresh *security) error {
	if (s.api == nil) != (fresh.api == nil) || (s.peerServer == nil) != (fresh.peerServer == nil) ||
		(s.tokens == nil) != (fresh.tokens == nil) || s.clientCerts != fresh.clientCerts {
		return errors.New("turning TLS, client certificates or tokens on or off needs a restart")
	}
	s.state.Store(fresh.state.Load())
	if s.tokens != nil {
		s.tokens.list.Store(fresh.tokens.list.Load())
	}
	return nil
}

// peerCreds are the gRPC credentials of calls to other nodes: the current
// peer client configuration at each handshake.
type peerCreds struct{ s *security }

func (p peerCreds) current() credentials.TransportCredentials {
	return credentials.NewTLS(p.s.state.Load().peerClient)
}

func (p peerCreds) ClientHandshake(ctx context.Context, authority string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return p.current().ClientHandshake(ctx, authority, conn)
}

func (p peerCreds) ServerHandshake(net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("peer credentials are for dialling only")
}

func (p peerCreds) Info() credentials.ProtocolInfo          { return p.current().Info() }
func (p peerCreds) Clone() credentials.TransportCredentials { return p }
func (p peerCreds) OverrideServerName(string) error         { return nil }

// loadPair loads a certificate and its key and checks the certificate's
// validity period.
func loadPair(certFlag, certFile, keyFlag, keyFile string) (tls.Certificate, error) {
	for _, f := range [][2]string{{certFlag, certFile}, {keyFlag, keyFile}} {
		fi, err := os.Stat(f[1])
		if err != nil {
			return tls.Certificate{}, fmt.Errorf("%s: %w", f[0], err)
		}
		if f[1] == keyFile && fi.Mode().Perm()&0o004 != 0 {
			// A private key every local user can read is a leaked key.
			return tls.Certificate{}, fmt.Errorf("%s %s is readable by every user (mode %04o): chmod o-rwx (0600, or 0640 for a group)",
				keyFlag, keyFile, fi.Mode().Perm())
		}
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("%s %s with %s %s: %w", certFlag, certFile, keyFlag, keyFile, err)
	}
	leaf := cert.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return tls.Certificate{}, fmt.Errorf("%s %s: %w", certFlag, certFile, err)
		}
		cert.Leaf = leaf
	}
	now := time.Now()
	switch {
	case now.After(leaf.NotAfter):
		return tls.Certificate{}, fmt.Errorf("%s %s (%q) expired at %s", certFlag, certFile, leaf.Subject.CommonName, leaf.NotAfter.UTC().Format(time.RFC3339))
	case now.Before(leaf.NotBefore):
		return tls.Certificate{}, fmt.Errorf("%s %s (%q) is not valid before %s", certFlag, certFile, leaf.Subject.CommonName, leaf.NotBefore.UTC().Format(time.RFC3339))
	}
	return cert, nil
}

// loadCA reads a PEM bundle of CA certificates.
func loadCA(flag, file string) (*x509.CertPool, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", flag, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s %s: no PEM certificate in it", flag, file)
	}
	return pool, nil
}

// tlsStreamLayer is a raft.StreamLayer over mutual TLS. Accepted
// connections do their handshake on first use, in raft's per-connection
// goroutine, so a slow or hostile peer cannot stall Accept.
type tlsStreamLayer struct {
	net.Listener
	advertise net.Addr
	sec       *security
	logger    *slog.Logger
}

var _ raft.StreamLayer = (*tlsStreamLayer)(nil)

func newTLSStreamLayer(bind string, advertise net.Addr, s *security, logger *slog.Logger) (*tlsStreamLayer, error) {
	ln, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, err
	}
	return &tlsStreamLayer{Listener: ln, advertise: advertise, sec: s, logger: logger}, nil
}

func (l *tlsStreamLayer) Addr() net.Addr { return l.advertise }

func (l *tlsStreamLayer) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &serverTLSConn{Conn: tls.Server(c, l.sec.peerServer), logger: l.logger}, nil
}

// Dial connects to a peer; the timeout covers the TLS handshake.
func (l *tlsStreamLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: timeout}, Config: l.sec.state.Load().peerClient}
	c, err := d.Dial("tcp", string(addr))
	if err != nil {
		// A peer that is down is raft's business (it logs and backs off);
		// a handshake that fails is a configuration problem worth a line.
		var op *net.OpError
		if !errors.As(err, &op) || op.Op != "dial" {
			l.logger.Warn("raft peer TLS handshake failed", "dialled", string(addr), "error", err)
		}
		return nil, fmt.Errorf("raft peer TLS to %s: %w", addr, err)
	}
	return c, nil
}

// serverTLSConn handshakes, with a deadline, before the first read or
// write and logs a failed handshake with the reason (an unknown CA, an
// expired certificate, a missing peer name, a plaintext peer).
type serverTLSConn struct {
	*tls.Conn
	logger *slog.Logger
	once   sync.Once
	err    error
}

func (c *serverTLSConn) handshake() error {
	c.once.Do(func() {
		c.Conn.SetDeadline(time.Now().Add(peerHandshakeTimeout))
		c.err = c.Conn.Handshake()
		c.Conn.SetDeadline(time.Time{})
		if c.err != nil {
			c.logger.Warn("raft peer TLS handshake failed", "remote", c.RemoteAddr().String(), "error", c.err)
		}
	})
	return c.err
}

func (c *serverTLSConn) Read(b []byte) (int, error) {
	if err := c.handshake(); err != nil {
		return 0, err
	}
	return c.Conn.Read(b)
}

func (c *serverTLSConn) Write(b []byte) (int, error) {
	if err := c.handshake(); err != nil {
		return 0, err
	}
	return c.Conn.Write(b)
}

// loggedCreds logs failed API handshakes: the client only sees a closed
// connection or a TLS alert, the node's log says why.
type loggedCreds struct {
	credentials.TransportCredentials
	logger *slog.Logger
}

func (c loggedCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	out, info, err := c.TransportCredentials.ServerHandshake(conn)
	if err != nil {
		c.logger.Warn("api TLS handshake failed", "remote", conn.RemoteAddr().String(), "error", err)
	}
	return out, info, err
}

func (c loggedCreds) Clone() credentials.TransportCredentials {
	return loggedCreds{TransportCredentials: c.TransportCredentials.Clone(), logger: c.logger}
}
