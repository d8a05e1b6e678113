package systemtest

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/tsstore/tsstore/internal/proccluster"
)

// grpcurlVersion is the grpcurl scripts/test.sh installs into .tools/bin.
const grpcurlVersion = "v1.9.3"

// moduleRoot is the checkout this test file belongs to.
func moduleRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(file))
}

// grpcurl finds the pinned grpcurl: $TSSTORE_GRPCURL, else .tools/bin.
// A missing binary fails the test: server reflection would otherwise go
// untested without anyone noticing.
func grpcurl(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("TSSTORE_GRPCURL")
	if bin == "" {
		bin = filepath.Join(moduleRoot(), ".tools", "bin", "grpcurl")
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("grpcurl not found (%v). scripts/test.sh installs it; by hand:\n"+
			"  GOBIN=%s go install github.com/fullstorydev/grpcurl/cmd/grpcurl@%s\n"+
			"or point TSSTORE_GRPCURL at a grpcurl binary", err, filepath.Join(moduleRoot(), ".tools", "bin"), grpcurlVersion)
	}
	return bin
}

// startNode starts a one-node cluster of the real binary and waits until
// it leads.
func startNode(t *testing.T, env ...string) *proccluster.Node {
	t.Helper()
	c := launch(t, proccluster.Options{Binary: binary(t), Dir: t.TempDir(), Nodes: 1, Env: env}, nil)
	return c.Nodes[0]
}

// The API is explorable with stock tools: server reflection lists the
// services, and grpcurl can call them and the health service.
func TestGrpcurlReflectionAndHealth(t *testing.T) {
	bin := grpcurl(t)
	c := startNode(t)
	waitServing(t, c.APIAddr)
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(bin, append([]string{"-plaintext", "-max-time", "20"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("grpcurl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}

	list := strings.Fields(run(c.APIAddr, "list"))
	for _, svc := range []string{"tsstore.v1.EventStore", "tsstore.v1.Cluster", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"} {
		if !contains(list, svc) {
			t.Errorf("grpcurl list does not show %s: %q", svc, list)
		}
	}

	var st struct {
		NodeID string `json:"nodeId"`
		Role   string `json:"role"`
	}
	out := run("-d", "{}", c.APIAddr, "tsstore.v1.EventStore/Status")
	if err := json.Unmarshal([]byte(out), &st); err != nil || st.NodeID != c.ID || st.Role != "leader" {
		t.Fatalf("Status via grpcurl: %+v, %v\n%s", st, err, out)
	}

	var hc struct {
		Status string `json:"status"`
	}
	out = run("-d", `{"service":"tsstore.v1.EventStore"}`, c.APIAddr, "grpc.health.v1.Health/Check")
	if err := json.Unmarshal([]byte(out), &hc); err != nil || hc.Status != "SERVING" {
		t.Fatalf("health via grpcurl: %+v, %v\n%s", hc, err, out)
	}
}

// waitServing waits, through the health service's Watch, until the node
// at addr reports SERVING.
func waitServing(t *testing.T, addr string) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for ctx.Err() == nil {
		w, err := healthpb.NewHealthClient(conn).Watch(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
		for err == nil {
			var resp *healthpb.HealthCheckResponse
			if resp, err = w.Recv(); err == nil && resp.Status == healthpb.HealthCheckResponse_SERVING {
				return
			}
		}
	}
	t.Fatalf("%s never reported SERVING", addr)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
