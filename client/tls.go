package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// LoadTLS builds a Config.TLS from PEM files. caFile is the CA bundle the
// servers' certificates must chain to (empty: the system roots); certFile
// and keyFile, both or neither, are a client certificate for servers that
// require one; serverName, if set, is the name checked in the server's
// certificate instead of the dialled host. TLS 1.2 is the minimum.
func LoadTLS(caFile, certFile, keyFile, serverName string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: serverName}
	if caFile != "" {
		b, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("client: CA file: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("client: CA file %s: no PEM certificate in it", caFile)
		}
	}
	if (certFile == "") != (keyFile == "") {
		return nil, errors.New("client: a client certificate needs both the certificate and the key file")
	}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("client: certificate %s with key %s: %w", certFile, keyFile, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// securityOptions are the dial options for Config.TLS and Config.Token.
// They come after DialOptions, so TLS wins over the insecure default.
func (c Config) securityOptions() []grpc.DialOption {
	var opts []grpc.DialOption
	if c.TLS != nil {
		opts = append(opts, grpc.WithTransportCredentials(credentials.NewTLS(c.TLS)))
	}
	if c.Token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(bearer{token: c.Token, secure: !c.InsecureToken}))
	}
	return opts
}

// bearer sends a bearer token with every call.
type bearer struct {
	token  string
	secure bool
}

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.token}, nil
}

// RequireTransportSecurity makes gRPC refuse to send the token on a
// plaintext connection unless InsecureToken was set.
func (b bearer) RequireTransportSecurity() bool { return b.secure }
