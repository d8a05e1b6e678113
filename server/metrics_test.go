package server

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/tsstore/tsstore/proto/tsstorev1"
)

func withMetrics(c *Config) { c.MetricsAddr = "127.0.0.1:0" }

// scrape is one GET /metrics: sample lines (name plus label string) and
// their values.
type scrape map[string]float64

func scrapeNode(t *testing.T, n *Node) scrape {
	t.Helper()
	if _, err := n.metrics.reg.Gather(); err != nil {
		t.Fatalf("%s: gathering metrics: %v", n.cfg.NodeID, err)
	}
	resp, err := http.Get("http://" + n.MetricsAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	out := scrape{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("sample %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// sampleName is a sample line's metric name.
func sampleName(line string) string {
	if i := strings.IndexByte(line, '{'); i >= 0 {
		return line[:i]
	}
	return line
}

// get sums the samples of one metric name whose labels include all of
// labels (each `key="value"`); found is false when there is none.
func (s scrape) get(name string, labels ...string) (sum float64, found bool) {
	for line, v := range s {
		if sampleName(line) != name {
			continue
		}
		match := true
		for _, l := range labels {
			if !strings.Contains(line, l) {
				match = false
			}
		}
		if match {
			sum += v
			found = true
		}
	}
	return sum, found
}

func (s scrape) must(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	v, ok := s.get(name, labels...)
	if !ok {
		t.Fatalf("no sample %s%v", name, labels)
	}
	return v
}

// waitMetric waits until a node's metric equals want (metrics recorded
// after a send may trail the client's receive).
func waitMetric(t *testing.T, n *Node, want float64, name string, labels ...string) {
	t.Helper()
	waitMetricFunc(t, n, func(v float64) bool { return v == want }, want, name, labels...)
}

func waitMetricFunc(t *testing.T, n *Node, ok func(float64) bool, want float64, name string, labels ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, _ := scrapeNode(t, n).get(name, labels...)
		if ok(got) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s%v = %v, want %v", n.cfg.NodeID, name, labels, got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// metricsWorkload appends (one invalid request, one producer retry, one
// via a follower), reads everything back, subscribes on a follower and
// takes a snapshot on the leader. It returns the number of events in the
// log and the acknowledged append requests the leader decided.
// metricsWorkload runs on leader l and follower f, the nodes the caller
// scrapes (asking the cluster again could name another leader).
func metricsWorkload(t *testing.T, l, f *Node) (events, leaderOK int) {
	t.Helper()
	lc, fc := dial(t, l), dial(t, f)
	for i := 1; i <= 5; i++ {
		var evs []*pb.Event
		for j := range i {
			evs = append(evs, ev("run/m", fmt.Sprint(i, j)))
		}
		req := &pb.AppendRequest{ProducerId: "metrics", ProducerSeq: uint64(events + 1), Events: evs}
		if _, err := lc.Append(ctxT(t), req); err != nil {
			t.Fatal(err)
		}
		events += i
		leaderOK++
	}
	// A producer retry: acknowledged again as a duplicate, nothing written.
	if resp, err := lc.Append(ctxT(t), &pb.AppendRequest{ProducerId: "metrics", ProducerSeq: 1, Events: []*pb.Event{ev("run/m", "1 0")}}); err != nil || !resp.Duplicate {
		t.Fatalf("retry: %v %v", resp, err)
	}
	leaderOK++
	if _, err := lc.Append(ctxT(t), &pb.AppendRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("empty append: %v", err)
	}
	if _, err := fc.Append(ctxT(t), &pb.AppendRequest{Events: []*pb.Event{ev("run/f", "a"), ev("run/f", "b")}}); err != nil {
		t.Fatal(err)
	}
	events += 2
	leaderOK++

	if got := readAll(t, lc, &pb.ReadRequest{}); len(got) != events {
		t.Fatalf("read %d events, want %d", len(got), events)
	}
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	sub, err := fc.Subscribe(ctx, &pb.ReadRequest{MinNextOffset: uint64(events)})
	if err != nil {
		t.Fatal(err)
	}
	collect(t, sub.Recv, 0, events)
	waitMetric(t, f, float64(events), "tsstore_read_events_sent_total", `rpc="Subscribe"`)
	waitMetric(t, f, 1, "tsstore_subscriptions_active")
	cancel()
	waitMetric(t, f, 0, "tsstore_subscriptions_active")

	if err := l.raft.Snapshot().Error(); err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	return events, leaderOK
}

// steadyMetrics is withMetrics with Raft timeouts long enough that a
// loaded CI machine does not change the leader under the test, whose
// counts are per node.
func steadyMetrics(c *Config) {
	withMetrics(c)
	c.HeartbeatTimeout, c.ElectionTimeout, c.LeaderLeaseTimeout = time.Second, time.Second, 500*time.Millisecond
}

func TestMetricsCountAppendsReadsAndSnapshots(t *testing.T) {
	tc := newTestCluster(t, 3, steadyMetrics)
	l, f := tc.leader(), tc.follower()
	before, beforeF := scrapeNode(t, l), scrapeNode(t, f)
	events, leaderOK := metricsWorkload(t, l, f)
	after, afterF := scrapeNode(t, l), scrapeNode(t, f)

	delta := func(s0, s1 scrape, name string, labels ...string) float64 {
		t.Helper()
		v0, _ := s0.get(name, labels...)
		return s1.must(t, name, labels...) - v0
	}
	for _, c := range []struct {
		name   string
		labels []string
		got    float64
		want   float64
	}{
		{"tsstore_append_requests_total", []string{`code="OK"`}, delta(before, after, "tsstore_append_requests_total", `code="OK"`), float64(leaderOK)},
		{"tsstore_append_requests_total", []string{`code="InvalidArgument"`}, delta(before, after, "tsstore_append_requests_total", `code="InvalidArgument"`), 1},
		// Written events plus the retried one (answered, not written).
		{"tsstore_append_events_total", []string{`code="OK"`}, delta(before, after, "tsstore_append_events_total", `code="OK"`), float64(events + 1)},
		{"tsstore_append_duplicate_requests_total", nil, delta(before, after, "tsstore_append_duplicate_requests_total"), 1},
		{"tsstore_append_duration_seconds_count", nil, delta(before, after, "tsstore_append_duration_seconds_count"), float64(leaderOK)},
		// Every request the leader proposed went into exactly one entry;
		// the retry too (dedup is the FSM's decision).
		{"tsstore_group_commit_requests_per_entry_sum", nil, delta(before, after, "tsstore_group_commit_requests_per_entry_sum"), float64(leaderOK)},
		{"tsstore_group_commit_events_per_entry_sum", nil, delta(before, after, "tsstore_group_commit_events_per_entry_sum"), float64(events + 1)},
		{"tsstore_read_events_sent_total", []string{`rpc="Read"`}, delta(before, after, "tsstore_read_events_sent_total", `rpc="Read"`), float64(events)},
		{"tsstore_fsm_snapshot_persist_duration_seconds_count", nil, delta(before, after, "tsstore_fsm_snapshot_persist_duration_seconds_count"), 1},
		{"tsstore_fsm_next_offset", nil, after.must(t, "tsstore_fsm_next_offset"), float64(events)},
		{"tsstore_raft_state", []string{`state="leader"`}, after.must(t, "tsstore_raft_state", `state="leader"`), 1},
		{"grpc_server_handled_total", []string{`grpc_method="Append"`, `grpc_code="OK"`}, delta(before, after, "grpc_server_handled_total", `grpc_method="Append"`, `grpc_code="OK"`), float64(leaderOK)},
		{"grpc_server_handled_total", []string{`grpc_method="Append"`, `grpc_code="InvalidArgument"`}, delta(before, after, "grpc_server_handled_total", `grpc_method="Append"`, `grpc_code="InvalidArgument"`), 1},
		// The follower forwarded one request and decided none.
		{"tsstore_append_forwarded_total", []string{`code="OK"`}, delta(beforeF, afterF, "tsstore_append_forwarded_total", `code="OK"`), 1},
		{"tsstore_append_requests_total", []string{`code="OK"`}, delta(beforeF, afterF, "tsstore_append_requests_total", `code="OK"`), 0},
		{"tsstore_read_events_sent_total", []string{`rpc="Subscribe"`}, delta(beforeF, afterF, "tsstore_read_events_sent_total", `rpc="Subscribe"`), float64(events)},
		{"tsstore_raft_state", []string{`state="follower"`}, afterF.must(t, "tsstore_raft_state", `state="follower"`), 1},
		{"tsstore_subscriptions_active", nil, afterF.must(t, "tsstore_subscriptions_active"), 0},
	} {
		if c.got != c.want {
			t.Errorf("%s%v moved by %v, want %v", c.name, c.labels, c.got, c.want)
		}
	}
	for _, c := range []struct {
		s      scrape
		name   string
		labels []string
	}{
		{after, "tsstore_read_bytes_sent_total", []string{`rpc="Read"`}},
		{after, "tsstore_read_message_duration_seconds_count", []string{`rpc="Read"`}},
		{after, "tsstore_group_commit_entry_bytes_sum", nil},
		{after, "tsstore_raft_term", nil},
		{after, "tsstore_raft_commit_index", nil},
		{after, "tsstore_raft_applied_index", nil},
		{after, "tsstore_raft_last_snapshot_index", nil},
		{after, "tsstore_raft_leader_changes_total", nil},
		{after, "tsstore_segments", nil},
		{after, "tsstore_segments_bytes", nil},
		{after, "tsstore_fsm_last_timestamp_seconds", nil},
		{after, "grpc_server_handling_seconds_count", []string{`grpc_method="Read"`}},
		{after, "tsstore_raft_commitTime_count", nil}, // bridged from hashicorp/raft
		{afterF, "tsstore_raft_leader_changes_total", nil},
		{afterF, "tsstore_raft_last_contact_seconds", nil},
		{afterF, "tsstore_read_message_duration_seconds_count", []string{`rpc="Subscribe"`}},
	} {
		if v := c.s.must(t, c.name, c.labels...); v <= 0 {
			t.Errorf("%s%v = %v, want > 0", c.name, c.labels, v)
		}
	}
	if lt, ft := after.must(t, "tsstore_raft_term"), afterF.must(t, "tsstore_raft_term"); lt != ft {
		t.Errorf("leader term %v, follower term %v", lt, ft)
	}
	if c, a := after.must(t, "tsstore_raft_commit_index"), after.must(t, "tsstore_fsm_applied_index"); a > c {
		t.Errorf("applied index %v beyond commit index %v", a, c)
	}
	if _, ok := after.get("tsstore_append_requests_total", `node="`+l.cfg.NodeID+`"`); !ok {
		t.Errorf("samples lack the node label")
	}
}

func TestMetricsCountLeaderChanges(t *testing.T) {
	tc := newTestCluster(t, 3, withMetrics)
	l := tc.leader()
	var other *Node
	for _, n := range tc.nodes {
		if n != l {
			other = n
		}
	}
	before := scrapeNode(t, other).must(t, "tsstore_raft_leader_changes_total")
	if _, err := dialCluster(t, l).TransferLeadership(ctxT(t), &pb.TransferLeadershipRequest{ToNodeId: other.cfg.NodeID}); err != nil {
		t.Fatal(err)
	}
	tc.leader()
	waitMetricFunc(t, other, func(v float64) bool { return v >= before+1 }, before+1, "tsstore_raft_leader_changes_total")
}

func TestMetricsEndpointLifecycle(t *testing.T) {
	tc := newTestCluster(t, 1, withMetrics)
	n := tc.leader()
	addr := n.MetricsAddr()
	if _, port, _ := net.SplitHostPort(addr); port == "0" || port == "" {
		t.Fatalf("MetricsAddr %q is not the bound address", addr)
	}
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Fatalf("content type %q", ct)
	}
	resp, err = http.Post("http://"+addr+"/metrics", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST /metrics: %s", resp.Status)
	}

	// A busy port fails the start before anything else runs.
	cfg := tc.cfgs[0]
	cfg.DataDir, cfg.MetricsAddr = t.TempDir(), addr
	cfg.RaftAddr, cfg.APIAddr = "127.0.0.1:0", "127.0.0.1:0"
	if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), "metrics listen") {
		t.Fatalf("start with a busy metrics port: %v", err)
	}
	cfg.MetricsAddr = "no-port"
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "metrics address") {
		t.Fatalf("bad metrics address validated: %v", err)
	}

	tc.close()
	if resp, err := http.Get("http://" + addr + "/metrics"); err == nil {
		resp.Body.Close()
		t.Fatal("metrics still served after Close")
	}

	off := newTestCluster(t, 1, nil)
	if a := off.leader().MetricsAddr(); a != "" {
		t.Fatalf("MetricsAddr without Config.MetricsAddr: %q", a)
	}
}

// TestDashboardMetricsExist checks that every metric the Grafana dashboard
// queries is exposed by a node that has served appends, reads, a
// subscription and a snapshot, so the dashboard cannot drift from the code.
func TestDashboardMetricsExist(t *testing.T) {
	b, err := os.ReadFile("../deploy/grafana/tsstore-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash any
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("dashboard is not valid JSON: %v", err)
	}
	exprs, vars := dashboardQueries(dash)
	if len(exprs) < 20 {
		t.Fatalf("found only %d PromQL expressions in the dashboard", len(exprs))
	}
	want := map[string][]string{} // metric name -> expressions using it
	for _, e := range exprs {
		names := promQLMetricNames(e)
		if len(names) == 0 {
			t.Errorf("no metric name found in %q", e)
		}
		for _, name := range names {
			want[name] = append(want[name], e)
		}
	}
	for _, v := range vars {
		m := regexp.MustCompile(`^label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,`).FindStringSubmatch(v)
		if m == nil {
			t.Errorf("template variable query %q: want label_values(metric, label)", v)
			continue
		}
		want[m[1]] = append(want[m[1]], v)
	}

	tc := newTestCluster(t, 3, steadyMetrics)
	metricsWorkload(t, tc.leader(), tc.follower())
	have := map[string]bool{}
	for _, n := range tc.nodes {
		for line := range scrapeNode(t, n) {
			have[sampleName(line)] = true
		}
	}
	var missing []string
	for name, uses := range want {
		if !have[name] {
			missing = append(missing, fmt.Sprintf("%s (in %q)", name, uses[0]))
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Fatalf("the dashboard queries metrics no node exposes:\n%s", strings.Join(missing, "\n"))
	}
}

// dashboardQueries returns every "expr" in the dashboard and the query of
// every template variable.
func dashboardQueries(v any) (exprs, vars []string) {
	var walk func(v any, inTemplating bool)
	walk = func(v any, inTemplating bool) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				switch s, isStr := x.(string); {
				case k == "expr" && isStr:
					exprs = append(exprs, s)
				case inTemplating && (k == "query" || k == "definition") && isStr:
					vars = append(vars, s)
				default:
					walk(x, inTemplating || k == "templating")
				}
			}
		case []any:
			for _, x := range v {
				walk(x, inTemplating)
			}
		}
	}
	walk(v, false)
	return exprs, vars
}

var (
	promStrings   = regexp.MustCompile("\"(?:[^\"\\\\]|\\\\.)*\"|'(?:[^'\\\\]|\\\\.)*'|`[^`]*`")
	promMatchers  = regexp.MustCompile(`\{[^}]*\}`)
	promRanges    = regexp.MustCompile(`\[[^\]]*\]`)
	promGrouping  = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	promNumbers   = regexp.MustCompile(`\b[0-9][0-9a-zA-Z_.+-]*`) // numbers and durations
	promIdent     = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*(\s*\()?`)
	promOperators = map[string]bool{"and": true, "or": true, "unless": true, "bool": true, "offset": true, "inf": true, "nan": true}
)

// promQLMetricNames returns the metric names a PromQL expression selects:
// what is left after removing strings, label matchers, ranges, grouping
// clauses, function calls, operators and numbers.
func promQLMetricNames(expr string) []string {
	e := promStrings.ReplaceAllString(expr, " ")
	e = promMatchers.ReplaceAllString(e, " ")
	e = promRanges.ReplaceAllString(e, " ")
	e = promGrouping.ReplaceAllString(e, " ")
	e = promNumbers.ReplaceAllString(e, " ")
	var out []string
	for _, m := range promIdent.FindAllStringSubmatch(e, -1) {
		if m[1] != "" || promOperators[strings.ToLower(m[0])] {
			continue // a function call or an operator
		}
		out = append(out, m[0])
	}
	return out
}

func TestPromQLMetricNames(t *testing.T) {
	got := promQLMetricNames(`histogram_quantile(0.99, sum by (le, grpc_method) (rate(grpc_server_handling_seconds_bucket{node=~"$node", grpc_type="unary"}[$__rate_interval]))) / ignoring(node) scalar(max(tsstore_raft_commit_index)) and time() - tsstore_x{a="b{c}"} offset 5m > 1e9 * 0.5`)
	want := []string{"grpc_server_handling_seconds_bucket", "tsstore_raft_commit_index", "tsstore_x"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("got %v, want %v", got, want)
	}
}
