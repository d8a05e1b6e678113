package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tsstore/tsstore/client"
	"github.com/tsstore/tsstore/internal/proccluster"
	"github.com/tsstore/tsstore/internal/testpki"
)

// benchSecurity is the throwaway security setup of the local cluster with
// --secure: a CA, one certificate per node carrying the peer name (the
// cluster name, "tsstore") for the other nodes and loopback for clients,
// and a tokens file with a read and an append token, and a bulk append
// token with the quota bulkRate (bytes a second; none if 0) for x's big
// appenders. Everything lives in the cluster directory's pki/ and is made
// again at every start.
type benchSecurity struct {
	dir, caFile, tokensFile string
	ca                      *testpki.CA
	tls                     *tls.Config // verifies the nodes against the CA
	readToken, appendToken  string
	bulkToken               string
}

func newBenchSecurity(dir string, bulkRate int64) (*benchSecurity, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	ca, err := testpki.WriteCA(dir, "bench")
	if err != nil {
		return nil, fmt.Errorf("bench CA: %w", err)
	}
	s := &benchSecurity{dir: dir, caFile: ca.CertFile, ca: ca, tokensFile: filepath.Join(dir, "tokens")}
	s.readToken, s.appendToken, s.bulkToken = randomToken(), randomToken(), randomToken()
	tokens := fmt.Sprintf("read bench-read %s\nappend bench-append %s\nappend bench-bulk %s", s.readToken, s.appendToken, s.bulkToken)
	if bulkRate > 0 {
		tokens += fmt.Sprintf(" append-rate=%d", bulkRate)
	}
	tokens += "\n"
	if err := os.WriteFile(s.tokensFile, []byte(tokens), 0o600); err != nil {
		return nil, err
	}
	if s.tls, err = client.LoadTLS(ca.CertFile, "", "", ""); err != nil {
		return nil, err
	}
	return s, nil
}

func randomToken() string {
	b := make([]byte, 20)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// issueNodeCerts gives every node of c its certificate, for the API and
// towards its peers.
func (s *benchSecurity) issueNodeCerts(c *proccluster.Cluster) error {
	for _, n := range c.Nodes {
		cert, err := s.ca.WriteLeaf(n.ID, testpki.Leaf{DNSNames: []string{"tsstore"}}.Loopback())
		if err != nil {
			return fmt.Errorf("bench certificate of %s: %w", n.ID, err)
		}
		n.AddArgs("--tls-cert", cert.CertFile, "--tls-key", cert.KeyFile,
			"--peer-tls-cert", cert.CertFile, "--peer-tls-key", cert.KeyFile)
	}
	return nil
}

// dialOptions are TLS against the CA and, if token is set, the token.
func (s *benchSecurity) dialOptions(token string) []grpc.DialOption {
	opts := []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(s.tls))}
	if token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(benchToken(token)))
	}
	return opts
}

// dial connects to one node's API as the bench's own calls do: plaintext,
// or TLS with the read token with --secure.
func (lc *benchLocal) dial(addr string) (*grpc.ClientConn, error) {
	if lc.sec == nil {
		return grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	}
	return grpc.NewClient(addr, lc.sec.dialOptions(lc.sec.readToken)...)
}

// benchToken sends a bearer token on TLS connections.
type benchToken string

func (t benchToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(t)}, nil
}
func (benchToken) RequireTransportSecurity() bool { return true }
