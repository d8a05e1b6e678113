package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
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
		{"--workloads", "a,x"},
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
	bin, err := proccluster.Build("../..", dir)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "bench.json")
	plots := filepath.Join(dir, "plots")
	cmd := exec.Command(bin, "bench", "--local", filepath.Join(dir, "cluster"), "--duration", "1s",
		"--producers", "4", "--events", "3000,6000", "--stream-events", "400", "--failovers", "1",
		"--json", out, "--plots", plots)
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
	if rep.System != "tsstore" || rep.Machine.Cores < 1 || !strings.Contains(stdout.String(), "p99.9 ms") {
		t.Errorf("report header %+v; table:\n%s", rep.Machine, stdout.String())
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
