package server

import (
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	"github.com/tsstore/tsstore/internal/version"
	pb "github.com/tsstore/tsstore/proto/tsstorev1"
)

// The build is in Status, in a build-info metric and in the node's first
// log line.
func TestVersionInStatusMetricsAndLog(t *testing.T) {
	var logs syncBuffer
	tc := newTestCluster(t, 1, func(c *Config) {
		withMetrics(c)
		c.Logger = slog.New(slog.NewJSONHandler(&logs, nil))
	})
	n := tc.leader()
	want := version.String()
	if want == "" {
		t.Fatal("empty version string")
	}

	st, err := dial(t, n).Status(ctxT(t), &pb.StatusRequest{})
	if err != nil || st.Version != want {
		t.Fatalf("Status version %q, %v; want %q", st.GetVersion(), err, want)
	}

	bi := version.Info()
	if v, ok := scrapeNode(t, n).get("tsstore_build_info", `version="`+bi.Version+`"`, `go_version="`+bi.GoVersion+`"`,
		`revision="`+bi.Revision+`"`, `node="n1"`); !ok || v != 1 {
		t.Fatalf("tsstore_build_info: %v, found %v", v, ok)
	}

	first, _, _ := strings.Cut(logs.String(), "\n")
	var m map[string]any
	if err := json.Unmarshal([]byte(first), &m); err != nil || m["msg"] != "starting tsstore" || m["version"] != want || m["node"] != "n1" {
		t.Fatalf("first log line %q (%v)", first, err)
	}
}
