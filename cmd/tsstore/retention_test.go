package main

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/tsstore/tsstore/segment"
	"github.com/tsstore/tsstore/server"
)

// TestRetentionCLI sets a policy, lists it, dry-runs and commits a cut
// with `tsstore compact`, and compares the replicas with `tsstore verify
// --cluster` before and after one node's sealed segment rots.
func TestRetentionCLI(t *testing.T) {
	tc, ctx := startFilled(t, 3, "retention-cli", func(c *server.Config) { c.RetentionInterval = 0 })
	nodes, addrs, cl := tc.Nodes, tc.Addrs, tc.Client
	all := "--addr=" + strings.Join(addrs, ",")
	// Every node must know every API address for verify --cluster.
	for {
		st, err := cl.Status(ctx)
		known := 0
		for _, n := range st.GetNodes() {
			if n.ApiAddress != "" {
				known++
			}
		}
		if err == nil && known == 3 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("node addresses not registered: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}

	if _, errOut, code := runCmd("retention", "set", "run/", all); code != 2 || !strings.Contains(errOut, "--max-age") {
		t.Fatalf("set without limits: exit %d, %q", code, errOut)
	}
	if _, errOut, code := runCmd("retention", "set", "run/", "--max-bytes", "lots", all); code != 2 {
		t.Fatalf("set --max-bytes lots: exit %d, %q", code, errOut)
	}
	out, errOut, code := runCmd("retention", "set", "run/", "--max-age", "30d", "--max-bytes", "2TB", all)
	if code != 0 || !strings.Contains(out, `retention of "run/" set: max age 30d, max bytes`) {
		t.Fatalf("set: exit %d\n%s%s", code, out, errOut)
	}
	// Nothing is 30 days old and 2 TB is far: nothing would go.
	out, errOut, code = runCmd("compact", "--dry-run", all)
	if code != 0 || !strings.Contains(out, "no sealed segment to drop") || !strings.Contains(out, `policy "run/" keeps it`) {
		t.Fatalf("compact --dry-run under the first policy: exit %d\n%s%s", code, out, errOut)
	}
	if _, errOut, code := runCmd("retention", "set", "run/", "--max-bytes", "1", all); code != 0 {
		t.Fatalf("set --max-bytes 1: exit %d, %q", code, errOut)
	}
	// list answers from the node asked: let n3 apply what the leader has.
	var applied uint64
	for _, n := range nodes {
		applied = max(applied, n.Processor().AppliedIndex())
	}
	if err := nodes[2].Processor().WaitApplied(ctx, applied); err != nil {
		t.Fatal(err)
	}
	out, errOut, code = runCmd("retention", "list", "--addr", addrs[2])
	if code != 0 || !strings.Contains(out, `"run/"`) || !strings.Contains(out, "policy version 2") || !strings.Contains(out, "local") {
		t.Fatalf("list: exit %d\n%s%s", code, out, errOut)
	}
	out, errOut, code = runCmd("compact", "--dry-run", all)
	if code != 0 || !strings.Contains(out, "would drop") {
		t.Fatalf("compact --dry-run: exit %d\n%s%s", code, out, errOut)
	}
	out, errOut, code = runCmd("compact", "--json", all)
	var cut struct {
		Cut       uint64 `json:"cut"`
		Committed bool   `json:"committed"`
	}
	if err := json.Unmarshal([]byte(out), &cut); code != 0 || err != nil || !cut.Committed || cut.Cut == 0 {
		t.Fatalf("compact --json: exit %d, %v\n%s%s", code, err, out, errOut)
	}

	// Every node applies the cut before the replicas are compared.
	for _, n := range nodes {
		applied = max(applied, n.Processor().AppliedIndex())
	}
	for _, n := range nodes {
		if err := n.Processor().WaitApplied(ctx, applied); err != nil {
			t.Fatal(err)
		}
	}
	out, errOut, code = runCmd("verify", "--cluster", "--json", all)
	var vr clusterVerifyResult
	if err := json.Unmarshal([]byte(out), &vr); code != 0 || err != nil || !vr.OK || len(vr.Nodes) != 3 || len(vr.Segments) == 0 {
		t.Fatalf("verify --cluster: exit %d, %v\n%s%s", code, err, out, errOut)
	}
	for _, s := range vr.Segments {
		if len(s.Digests) != 3 {
			t.Fatalf("segment %d compared on %d nodes, want 3: %+v", s.BaseOffset, len(s.Digests), s)
		}
	}
	// Rot one byte of n2's copy of a kept sealed segment, in place.
	var seg segment.SegmentInfo
	nodes[1].Processor().WithLog(func(l *segment.Log) error { seg = l.Segments()[0]; return nil })
	f, err := os.OpenFile(seg.Path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{'#'}, seg.Size/2); err != nil {
		t.Fatal(err)
	}
	f.Close()
	out, errOut, code = runCmd("verify", "--cluster", all)
	if code != 1 || !strings.Contains(out, segment.FileName(seg.BaseOffset)+": DIFFERS: n2:") {
		t.Fatalf("verify --cluster after rot: exit %d\n%s%s", code, out, errOut)
	}
	if _, _, code := runCmd("verify", "--cluster", "--data-dir", t.TempDir()); code != 2 {
		t.Fatalf("--cluster with --data-dir: exit %d, want 2", code)
	}

	// streams delete: the stream is gone from reads and listings.
	if _, errOut, code := runCmd("streams", "delete", "missing", all); code == 0 || !strings.Contains(errOut, "no events") {
		t.Fatalf("streams delete of a missing stream: exit %d, %q", code, errOut)
	}
	out, errOut, code = runCmd("streams", "delete", "run/r", all)
	if code != 0 || !strings.Contains(out, `stream "run/r" deleted: its 400 events up to offset`) {
		t.Fatalf("streams delete: exit %d\n%s%s", code, out, errOut)
	}
	// The listing answers from the node asked: let every node apply it.
	for _, n := range nodes {
		if err := n.Processor().WaitApplied(ctx, nodes[0].Processor().AppliedIndex()); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range nodes {
		for deadline := time.Now().Add(10 * time.Second); ; {
			if _, ok := n.Processor().StreamDeleted("run/r"); ok {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the delete did not reach every node")
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	if out, errOut, code := runCmd("streams", all); code != 0 || strings.Contains(out, "run/r") || !strings.Contains(errOut, "no streams") {
		t.Fatalf("streams after the delete: exit %d\n%s%s", code, out, errOut)
	}
}

func TestParseAge(t *testing.T) {
	for in, want := range map[string]time.Duration{"30d": 30 * 24 * time.Hour, "2w": 14 * 24 * time.Hour, "36h": 36 * time.Hour, "1.5d": 36 * time.Hour} {
		if got, err := parseAge(in); err != nil || got != want {
			t.Errorf("parseAge(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "0d", "-1h", "xd", "5"} {
		if _, err := parseAge(bad); err == nil {
			t.Errorf("parseAge(%q) accepted", bad)
		}
	}
}
