package systemtest

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/tsstore/tsstore/client"
	"github.com/tsstore/tsstore/internal/proccluster"
	"github.com/tsstore/tsstore/internal/testpki"
)

const (
	sysReadToken   = "sys-read-token-0123456789"
	sysAppendToken = "sys-append-token-0123456789"
)

// tokenCreds sends a bearer token on TLS connections.
type tokenCreds string

func (t tokenCreds) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(t)}, nil
}
func (tokenCreds) RequireTransportSecurity() bool { return true }

// A three-node cluster of real processes with mutual TLS between nodes,
// TLS for clients and tokens: an append token writes, a read token reads
// but cannot write, the cluster survives its leader's SIGKILL, and grpcurl
// reaches it with the CA and a token.
func TestSecurityClusterFailover(t *testing.T) {
	grpcurlBin := grpcurl(t)
	dir := t.TempDir()
	ca := testpki.NewCA(t, dir, "ca")
	tokens := filepath.Join(dir, "tokens")
	if err := os.WriteFile(tokens, []byte(fmt.Sprintf("read dashboard %s\nappend trainer %s\n", sysReadToken, sysAppendToken)), 0o600); err != nil {
		t.Fatal(err)
	}
	caTLS, err := client.LoadTLS(ca.CertFile, "", "", "")
	if err != nil {
		t.Fatal(err)
	}
	c := launch(t, proccluster.Options{
		Binary: binary(t), Dir: filepath.Join(dir, "cluster"),
		ExtraArgs: []string{"--peer-tls-ca", ca.CertFile, "--auth-tokens-file", tokens},
		DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(caTLS)),
			grpc.WithPerRPCCredentials(tokenCreds(sysReadToken))},
	}, func(c *proccluster.Cluster) {
		for _, n := range c.Nodes {
			// One certificate per node: the peer name (the cluster name,
			// "tsstore") for the other nodes, loopback for clients.
			cert := ca.Issue(t, n.ID, testpki.Leaf{DNSNames: []string{"tsstore"}}.Loopback())
			n.AddArgs("--tls-cert", cert.CertFile, "--tls-key", cert.KeyFile,
				"--peer-tls-cert", cert.CertFile, "--peer-tls-key", cert.KeyFile)
		}
	})
	leader := waitLeader(t, c)

	connect := func(token string) *client.Client {
		t.Helper()
		cfg := client.DefaultConfig(c.APIAddrs()...)
		cfg.TLS, cfg.Token = caTLS, token
		cl, err := client.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cl.Close() })
		return cl
	}
	writer, reader := connect(sysAppendToken), connect(sysReadToken)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	appendN := func(from, n int) {
		t.Helper()
		for i := from; i < from+n; i++ {
			if _, err := writer.Append(ctx, client.Event{Stream: "run/secure", Type: "Step", Payload: fmt.Appendf(nil, "e%d", i)}); err != nil {
				t.Fatalf("append %d with the append token: %v", i, err)
			}
		}
	}
	readAll := func(want int) {
		t.Helper()
		var got []string
		for ev, err := range reader.Replay(ctx, 0, client.To(uint64(want)), client.Linearizable()) {
			if err != nil {
				t.Fatalf("replay with the read token: %v", err)
			}
			got = append(got, string(ev.Payload))
		}
		if len(got) != want {
			t.Fatalf("read back %d events, want %d", len(got), want)
		}
		for i, p := range got {
			if p != fmt.Sprintf("e%d", i) {
				t.Fatalf("event %d is %q", i, p)
			}
		}
	}

	appendN(0, 20)
	readAll(20)
	_, err = reader.Append(ctx, client.Event{Stream: "run/secure", Type: "Step"})
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "needs role append") {
		t.Fatalf("append with the read token: %v", err)
	}

	if err := leader.Kill(); err != nil {
		t.Fatal(err)
	}
	newLeader := waitLeader(t, c)
	if newLeader == leader {
		t.Fatal("the killed node is still reported leader")
	}
	appendN(20, 20)
	readAll(40)

	run := func(args ...string) (string, error) {
		out, err := exec.Command(grpcurlBin, append([]string{"-max-time", "20", "-cacert", ca.CertFile}, args...)...).CombinedOutput()
		return string(out), err
	}
	out, err := run("-H", "authorization: Bearer "+sysReadToken, "-d", "{}", newLeader.APIAddr, "tsstore.v1.EventStore/Status")
	var st struct {
		NodeID string `json:"nodeId"`
		Role   string `json:"role"`
	}
	if err != nil || json.Unmarshal([]byte(out), &st) != nil || st.NodeID != newLeader.ID || st.Role != "leader" {
		t.Fatalf("grpcurl Status with CA and token: %v\n%s", err, out)
	}
	if out, err := run("-d", "{}", newLeader.APIAddr, "tsstore.v1.EventStore/Status"); err == nil || !strings.Contains(out, "Unauthenticated") {
		t.Fatalf("grpcurl without a token: %v\n%s", err, out)
	}

	// Rotate the read token: SIGHUP makes every node re-read the file.
	const rotated = "sys-read-token-rotated-0123456789"
	if err := os.WriteFile(tokens, []byte(fmt.Sprintf("read dashboard %s\nappend trainer %s\n", rotated, sysAppendToken)), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, n := range c.Nodes {
		if !n.Running() {
			continue
		}
		if err := n.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(20 * time.Second); !strings.Contains(n.Logs(), `"msg":"security reloaded"`); {
			if time.Now().After(deadline) {
				t.Fatalf("%s did not reload on SIGHUP", n.ID)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if out, err := run("-H", "authorization: Bearer "+sysReadToken, "-d", "{}", newLeader.APIAddr, "tsstore.v1.EventStore/Status"); err == nil || !strings.Contains(out, "Unauthenticated") {
		t.Fatalf("grpcurl with the revoked token: %v\n%s", err, out)
	}
	if out, err := run("-H", "authorization: Bearer "+rotated, "-d", "{}", newLeader.APIAddr, "tsstore.v1.EventStore/Status"); err != nil {
		t.Fatalf("grpcurl with the new token: %v\n%s", err, out)
	}

	// Health stays open to probes: TLS, no token.
	conn, err := grpc.NewClient(newLeader.APIAddr, grpc.WithTransportCredentials(credentials.NewTLS(caTLS)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Any answer proves the probe got through without a token; wait for
	// SERVING, which a node reports only once it has a leader and has
	// caught up (a spurious election on a loaded machine may delay it).
	for deadline := time.Now().Add(15 * time.Second); ; {
		hc, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: "tsstore.v1.EventStore"})
		if err != nil {
			t.Fatalf("health check without a token: %v", err)
		}
		if hc.Status == healthpb.HealthCheckResponse_SERVING {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("health check without a token: %v for 15 s", hc.Status)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
