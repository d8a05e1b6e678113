package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tsstore/tsstore/bench"
	"github.com/tsstore/tsstore/internal/proccluster"
)

func TestBenchFlags(t *testing.T) {
	f, err := parseBenchFlags([]string{"--workloads", "a, c,f", "--duration", "3s", "--events", "2000,1000", "--json", "x.json"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !f.workloads["a"] || !f.workloads["c"] || !f.workloads["f"] || f.workloads["b"] || f.duration != 3*time.Second ||
		f.events[0] != 1000 || f.events[1] != 2000 || f.jsonOut != "x.json" || f.producers != 64 || f.size != 256 {
		t.Fatalf("parsed %+v", f)
	}
	if f, err := parseBenchFlags([]string{"--out", "y.json"}, io.Discard); err != nil || f.jsonOut != "y.json" || len(f.workloads) != 8 {
		t.Fatalf("--out: %+v %v", f, err)
	}
	for _, bad := range [][]string{
		{"--workloads", "a,z"},
		{"--inflight", "9"},
		{"--addr", "127.0.0.1:1", "--workloads", "f"},
		{"--addr", "127.0.0.1:1", "--workloads", "a", "--profile", "p"},
		{"--events", "0"},
	} {
		if _, err := parseBenchFlags(bad, io.Discard); !errors.Is(err, errUsage) {
			t.Errorf("%q: %v, want a usage error", bad, err)
		}
	}
}

// x is not in the default set, turns on --secure, and takes its own
// flags; it needs the local cluster.
func TestBenchHostileFlags(t *testing.T) {
	f, err := parseBenchFlags(nil, io.Discard)
	if err != nil || f.workloads["x"] || f.secure {
		t.Fatalf("defaults: x %v, secure %v, %v", f.workloads["x"], f.secure, err)
	}
	f, err = parseBenchFlags([]string{"--workloads", "x", "--duration", "20s"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := hostileFlags{readers: 1000, readerConns: 10, appends: 100, appendConns: 10, appendBytes: 15 << 20, redial: true, streamCalls: 10}
	if !f.workloads["x"] || len(f.workloads) != 1 || !f.secure || f.hostile != want || f.duration != 20*time.Second {
		t.Fatalf("--workloads x: %+v", f)
	}
	f, err = parseBenchFlags([]string{"--workloads", "x,c", "--hostile-readers", "40", "--hostile-reader-conns", "4",
		"--hostile-appends", "0", "--hostile-append-conns", "2", "--hostile-append-bytes", "1048576", "--hostile-redial=false",
		"--hostile-stream-appenders", "3", "--hostile-stream-appender-streams", "5"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if want := (hostileFlags{readers: 40, readerConns: 4, appends: 0, appendConns: 2, appendBytes: 1 << 20, streamAppenders: 3, streamCalls: 5}); f.hostile != want || !f.workloads["c"] {
		t.Fatalf("hostile flags %+v, want %+v", f.hostile, want)
	}
	if f, err := parseBenchFlags([]string{"--workloads", "a", "--secure"}, io.Discard); err != nil || !f.secure {
		t.Fatalf("--secure: %+v %v", f, err)
	}
	for _, bad := range [][]string{
		{"--workloads", "x", "--hostile-append-bytes", "16777216"},
		{"--workloads", "x", "--hostile-reader-conns", "0"},
		{"--workloads", "x", "--hostile-append-conns", "0"},
		{"--workloads", "x", "--hostile-stream-appender-streams", "0"},
		{"--workloads", "x", "--hostile-readers", "-1"},
		{"--addr", "127.0.0.1:1", "--workloads", "x"},
		{"--addr", "127.0.0.1:1", "--workloads", "a", "--secure"},
	} {
		if _, err := parseBenchFlags(bad, io.Discard); !errors.Is(err, errUsage) {
			t.Errorf("%q: %v, want a usage error", bad, err)
		}
	}
}

// The metrics x reads about Read and Append calls, from the text format.
func TestBenchSeries(t *testing.T) {
	read := `grpc_method="Read",grpc_service="tsstore.v1.EventStore",grpc_type="server_stream"`
	before := map[string]float64{
		`grpc_server_started_total{` + read + `}`:                                                                2,
		`grpc_server_handled_total{grpc_code="OK",` + read + `}`:                                                 2,
		`grpc_server_started_total{grpc_method="ReadIndex",grpc_service="tsstore.v1.Cluster",grpc_type="unary"}`: 7,
	}
	now := map[string]float64{
		`grpc_server_started_total{` + read + `}`:                                                                12,
		`grpc_server_handled_total{grpc_code="OK",` + read + `}`:                                                 3,
		`grpc_server_handled_total{grpc_code="ResourceExhausted",` + read + `}`:                                  4,
		`grpc_server_started_total{grpc_method="ReadIndex",grpc_service="tsstore.v1.Cluster",grpc_type="unary"}`: 9,
		`tsstore_auth_refused_total{code="Unauthenticated",grpc_method="Append"}`:                                100,
		`tsstore_auth_refused_total{code="PermissionDenied",grpc_method="Append"}`:                               1,
		`process_resident_memory_bytes`:                                                                          1 << 20,
	}
	reached, ended := readersIn(before, now)
	if reached != 10 || len(ended) != 2 || ended["OK"] != 1 || ended["ResourceExhausted"] != 4 {
		t.Fatalf("reached %v, ended %v", reached, ended)
	}
	if got := sumSeries(now, authRefused, `code="Unauthenticated"`, `grpc_method="Append"`); got != 100 {
		t.Fatalf("unauthenticated appends %v", got)
	}
	if got := sumSeries(now, authRefused, `grpc_method="Append"`); got != 101 {
		t.Fatalf("refused appends %v", got)
	}
	if got := sumSeries(now, "process_resident_memory_bytes"); got != 1<<20 {
		t.Fatalf("RSS %v", got)
	}
	if got := labelValue(`x{a="1",grpc_code="Unavailable"}`, "grpc_code"); got != "Unavailable" {
		t.Fatalf("labelValue %q", got)
	}
	if v := hostileVerdict(600, 0.7); !strings.Contains(v, "RSS goal MISSED (leader peak 600 MiB, 88 MiB over 512 MiB)") || !strings.Contains(v, "rate goal MISSED (70% of baseline, 10 points below 80%)") {
		t.Fatalf("verdict %q", v)
	}
	if v := hostileVerdict(300, 0.85); !strings.Contains(v, "RSS goal met") || !strings.Contains(v, "rate goal met") {
		t.Fatalf("verdict %q", v)
	}
}

// x against a secured local cluster of real processes, at toy sizes: the
// three rows with their memory, and what the leader did with the hostile
// calls (every reader reached the handler, every append was refused on
// its headers). No figure is asserted.
func TestBenchHostileClients(t *testing.T) {
	dir := t.TempDir()
	rep, b, _ := runLocalBench(t, dir, "--workloads", "x", "--duration", "1s",
		"--hostile-readers", "20", "--hostile-reader-conns", "4", "--hostile-appends", "6", "--hostile-append-conns", "3",
		"--hostile-append-bytes", "1048576", "--hostile-big-appenders", "2", "--hostile-stream-appenders", "2", "--hostile-stream-appender-streams", "3")
	if len(rep.Results) != 3 || rep.Config["security"] == nil {
		t.Fatalf("want rows x-baseline, x-hostile, x-after of a secured cluster: %s", b)
	}
	// Every node's peak is read, the attacked leader's too: "n2 (leader, attacked) 180 / 120".
	peak := regexp.MustCompile(`n\d( \([a-z, ]+\))? [1-9]\d* / [1-9]\d*`)
	for i, id := range []string{"x-baseline", "x-hostile", "x-after"} {
		r := rep.Results[i]
		if r.Workload != id || r.Events <= 0 || r.RSSMB == nil || *r.RSSMB <= 0 || r.HeapInuseMB == nil || *r.HeapInuseMB <= 0 {
			t.Errorf("row %d: %+v", i, r)
		}
		if got := peak.FindAllString(r.Note, -1); len(got) < 3 || !strings.Contains(strings.Join(got, ","), " (") {
			t.Errorf("%s: every node's and the leader's memory, got %q in\n%s", id, got, r.Note)
		}
	}
	note := rep.Results[1].Note
	// The readers' connections are redialled when the node cuts them (3 s
	// into a phase that a loaded machine stretches), so more streams may
	// be opened, and accepted, than the first 20.
	if m := regexp.MustCompile(`(\d+) opened on 4 connections, (\d+) accepted`).FindStringSubmatch(note); m == nil {
		t.Errorf("x-hostile note lacks the readers' streams opened and accepted:\n%s", note)
	} else if opened, _ := strconv.Atoi(m[1]); opened < 20 {
		t.Errorf("x-hostile opened %d reader streams, want at least 20:\n%s", opened, note)
	} else if accepted, _ := strconv.Atoi(m[2]); accepted < 20 || accepted > opened {
		t.Errorf("x-hostile: %d of %d reader streams accepted, want at least the first 20:\n%s", accepted, opened, note)
	}
	for _, want := range []string{"6 on 3 connections sent their bytes", "refused 6 Unauthenticated", "2 authenticated big appenders", "2 authenticated stream appenders (6 AppendStreams", "RSS goal", "rate goal"} {
		if !strings.Contains(note, want) {
			t.Errorf("x-hostile note lacks %q:\n%s", want, note)
		}
	}
}

// k against a local cluster of real processes, at toy sizes (64 KiB
// segments, a 256 KiB policy): both rows with their latency and max, the
// fsync figures, nothing compacted in the baseline and something in the
// compacting phase. No latency figure is asserted.
func TestBenchCompaction(t *testing.T) {
	f, err := parseBenchFlags(nil, io.Discard)
	if err != nil || f.workloads["k"] {
		t.Fatalf("k is not in the default set: %v %v", f.workloads, err)
	}
	if _, err := parseBenchFlags([]string{"--addr", "127.0.0.1:1", "--workloads", "k"}, io.Discard); !errors.Is(err, errUsage) {
		t.Fatalf("k with --addr: %v, want a usage error", err)
	}
	dir := t.TempDir()
	rep, b, stdout := runLocalBench(t, dir, "--workloads", "k", "--duration", "3s",
		"--producers", "4", "--serve-args", "--segment-bytes 65536", "--k-max-bytes", "262144")
	if len(rep.Results) != 2 || rep.Config["k_serve_args"] == nil {
		t.Fatalf("want rows k-baseline, k-compacting and k's serve args: %s", b)
	}
	for i, id := range []string{"k-baseline", "k-compacting"} {
		r := rep.Results[i]
		if r.Workload != id || r.Events <= 0 || r.P50ms == nil || r.P999ms == nil || r.MaxMs == nil || *r.P50ms > *r.MaxMs ||
			r.FsyncP50ms == nil || *r.FsyncP50ms <= 0 || r.FsyncP99ms == nil || r.CutsCommitted == nil || r.RewritesCommitted == nil || r.ReclaimedBytes == nil {
			t.Errorf("row %d: %+v", i, r)
		}
	}
	base, comp := rep.Results[0], rep.Results[1]
	if *base.CutsCommitted != 0 || *base.RewritesCommitted != 0 || *base.ReclaimedBytes != 0 {
		t.Errorf("k-baseline compacted: %v cuts, %v rewrites, %v bytes", *base.CutsCommitted, *base.RewritesCommitted, *base.ReclaimedBytes)
	}
	// The nodes count how long compaction held their apply paths: the
	// compacting phase holds them (applies of its entries at least), the
	// baseline does not.
	if base.HoldCount == nil || *base.HoldCount != 0 || comp.HoldCount == nil || *comp.HoldCount == 0 || comp.HoldMaxMs == nil || *comp.HoldMaxMs <= 0 {
		t.Errorf("compaction holds: baseline %v, compacting %v (longest %v ms)", base.HoldCount, comp.HoldCount, comp.HoldMaxMs)
	}
	if *comp.CutsCommitted+*comp.RewritesCommitted == 0 || *comp.ReclaimedBytes <= 0 {
		t.Errorf("k-compacting: %v cuts, %v rewrites, %v bytes reclaimed; want some\n%s", *comp.CutsCommitted, *comp.RewritesCommitted, *comp.ReclaimedBytes, stdout)
	}
	for _, want := range []string{"vs baseline max", "one fsync under this load", "rewrite failures 0", "apply ", "Raft log appends (one write + fsync each) in the phase: "} {
		if !strings.Contains(comp.Note, want) {
			t.Errorf("k-compacting note lacks %q:\n%s", want, comp.Note)
		}
	}
	if strings.Contains(comp.Note, "in the phase: none") {
		t.Errorf("no Raft log appends counted in the compacting phase:\n%s", comp.Note)
	}
	if !strings.Contains(stdout, "retention cuts and") {
		t.Errorf("table:\n%s", stdout)
	}
}

func TestFailoverRecovery(t *testing.T) {
	w := 100 * time.Millisecond
	// 1000/s for 2 s, kill at 2.0 s, nothing for 0.7 s, then 950/s.
	var rates []float64
	for i := range 60 {
		switch {
		case i < 20:
			rates = append(rates, 1000)
		case i < 27:
			rates = append(rates, 0)
		default:
			rates = append(rates, 950)
		}
	}
	got, ok := recovery(rates, w, 2*time.Second)
	if !ok || got != 700*time.Millisecond {
		t.Fatalf("recovered after %v (%v), want 700ms", got, ok)
	}
	if _, ok := recovery(rates[:30], w, 2*time.Second); ok {
		t.Fatal("recovered without a full 500 ms window after the outage")
	}
	if m := median([]float64{5, 1, 3}); m != 3 {
		t.Fatalf("median %v", m)
	}
	if m := median([]float64{4, 1, 3, 2}); m != 2.5 {
		t.Fatalf("median %v", m)
	}
	if countName(10000000) != "10M" || countName(100000) != "100k" || countName(1234) != "1234" {
		t.Fatal("countName")
	}
}

// TestBenchRunsEveryWorkload runs the real binary's bench with tiny sizes
// against its own local cluster and checks the report: every workload id,
// the fields each one promises, and the plots.
func TestBenchRunsEveryWorkload(t *testing.T) {
	dir := t.TempDir()
	plots := filepath.Join(dir, "plots")
	rep, b, stdout := runLocalBench(t, dir, "--duration", "1s",
		"--producers", "4", "--events", "3000,6000", "--stream-events", "400", "--failovers", "1",
		"--plots", plots)
	got := map[string]bench.Result{}
	for _, r := range rep.Results {
		got[r.Workload] = r
	}
	for _, id := range []string{"a", "b", "c", "d-3k", "d-6k", "e", "e-scan", "f", "g", "h-3k", "h-6k"} {
		r, ok := got[id]
		if !ok {
			t.Fatalf("no result %q in %s", id, b)
		}
		if id != "g" && !strings.HasPrefix(id, "h-") && (r.Events <= 0 || r.EventsPS <= 0) {
			t.Errorf("%s: %d events at %.0f/s", id, r.Events, r.EventsPS)
		}
	}
	for _, id := range []string{"a", "b", "c", "f"} {
		if r := got[id]; r.P50ms == nil || r.P999ms == nil || *r.P50ms > *r.P999ms {
			t.Errorf("%s: latency quantiles %v %v", id, r.P50ms, r.P999ms)
		}
	}
	if f := got["f"]; f.FirstAckms == nil || *f.FirstAckms <= 0 {
		t.Errorf("f: first_ack_ms %v", f.FirstAckms)
	}
	if g := got["g"]; g.SegmentBytesPerEvent == nil || *g.SegmentBytesPerEvent < 256 || g.RaftBytesPerEvent == nil || *g.RaftBytesPerEvent <= 0 ||
		*g.RaftBytesPerEvent >= *g.SegmentBytesPerEvent {
		t.Errorf("g: %v bytes per event, raft log %v: want at least the 256-byte payload in all, the raft log a part", g.SegmentBytesPerEvent, g.RaftBytesPerEvent)
	}
	for _, id := range []string{"h-3k", "h-6k"} {
		if h := got[id]; h.HeapInuseMB == nil || *h.HeapInuseMB <= 0 || h.RSSMB == nil || *h.RSSMB < *h.HeapInuseMB || h.RestartMs == nil || *h.RestartMs <= 0 {
			t.Errorf("%s: heap %v MiB, RSS %v MiB, restart %v ms", id, h.HeapInuseMB, h.RSSMB, h.RestartMs)
		}
	}
	if e := got["e"]; e.Events != got["e-scan"].Events || e.Events < 400 {
		t.Errorf("e delivered %d events, e-scan %d; the stream holds at least 400", e.Events, got["e-scan"].Events)
	}
	if d := got["d-6k"]; d.Events != 6000 {
		t.Errorf("d-6k replayed %d events", d.Events)
	}
	if rep.System != "tsstore" || rep.Machine.Cores < 1 || !strings.Contains(stdout, "p99.9 ms") {
		t.Errorf("report header %+v; table:\n%s", rep.Machine, stdout)
	}
	for _, p := range []string{"latency.png", "failover.png"} {
		if b, err := os.ReadFile(filepath.Join(plots, p)); err != nil || !bytes.HasPrefix(b, []byte("\x89PNG")) {
			t.Errorf("%s: %v", p, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "cluster")); err != nil {
		t.Errorf("--local dir: %v", err)
	}
}

// t against a local cluster of real processes, at toy sizes (64 KiB
// segments, a few thousand events, the default tier directory): the
// three rows, some of the log tiered and evicted on every node, the goal
// verdict in the note. No rate is asserted.
func TestBenchTier(t *testing.T) {
	f, err := parseBenchFlags(nil, io.Discard)
	if err != nil || f.workloads["t"] {
		t.Fatalf("t is not in the default set: %v %v", f.workloads, err)
	}
	for _, bad := range [][]string{{"--addr", "127.0.0.1:1", "--workloads", "t"}, {"--workloads", "t", "--t-events", "0"}} {
		if _, err := parseBenchFlags(bad, io.Discard); !errors.Is(err, errUsage) {
			t.Fatalf("%q: %v, want a usage error", bad, err)
		}
	}
	dir := t.TempDir()
	rep, b, _ := runLocalBench(t, dir, "--workloads", "t", "--t-events", "6000", "--serve-args", "--segment-bytes 65536")
	if len(rep.Results) != 3 {
		t.Fatalf("want rows t-local, t-cold, t-disk: %s", b)
	}
	for i, id := range []string{"t-local", "t-cold", "t-disk"} {
		if r := rep.Results[i]; r.Workload != id || r.Events < 6000 {
			t.Errorf("row %d: %+v", i, r)
		}
	}
	local, cold, disk := rep.Results[0], rep.Results[1], rep.Results[2]
	if local.Events != cold.Events || local.EventsPS <= 0 || cold.EventsPS <= 0 {
		t.Errorf("t-local %d events at %.0f/s, t-cold %d at %.0f/s", local.Events, local.EventsPS, cold.Events, cold.EventsPS)
	}
	if cold.TieredFraction == nil || *cold.TieredFraction <= 0 || *cold.TieredFraction >= 1 || disk.TieredFraction == nil {
		t.Errorf("tiered fraction %v", cold.TieredFraction)
	}
	for _, want := range []string{"of t-local's rate", "issue #13's goal", "tier GETs", "MB fetched"} {
		if !strings.Contains(cold.Note, want) {
			t.Errorf("t-cold note lacks %q:\n%s", want, cold.Note)
		}
	}
	if regexp.MustCompile(`(?:^|, )0 tier GETs`).MatchString(cold.Note) {
		t.Errorf("the cold replay fetched nothing from the store:\n%s", cold.Note)
	}
	if n := len(regexp.MustCompile(`n\d: data dir [0-9.]+ -> [0-9.]+ -> [0-9.]+ MB`).FindAllString(disk.Note, -1)); n != 3 || !strings.Contains(disk.Note, "tier directory") {
		t.Errorf("t-disk note, want every node's disk before, after tiering and after the reap, and the tier directory:\n%s", disk.Note)
	}
}

// runLocalBench builds tsstore into dir, runs `tsstore bench --local
// dir/cluster ARGS --json dir/bench.json`, and returns the report, its
// JSON and the table the bench printed.
func runLocalBench(t *testing.T, dir string, args ...string) (bench.Report, []byte, string) {
	t.Helper()
	bin, err := proccluster.Build("../..", dir)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "bench.json")
	cmd := exec.Command(bin, append(append([]string{"bench", "--local", filepath.Join(dir, "cluster")}, args...), "--json", out)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("bench: %v\n%s\n%s", err, stdout.String(), stderr.String())
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var rep bench.Report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	return rep, b, stdout.String()
}
