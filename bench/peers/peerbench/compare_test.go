package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestTableRatiosAndMissing(t *testing.T) {
	ts := &Report{System: "tsstore", Results: []Result{
		{Workload: "a", Name: "1 producer, waiting", EventsPS: 2000, P99: 3},
		{Workload: "d-1M", Name: "replay all", EventsPS: 1_600_000},
		{Workload: "f", Name: "failover", FirstAckMs: ptr(500), RecoveredMs: ptr(900)},
		{Workload: "g", Name: "disk", SegmentBytesPerEvent: ptr(300)},
	}}
	nats := &Report{System: "nats-default", Results: []Result{
		{Workload: "a", EventsPS: 4000, P99: 1},
		{Workload: "b", EventsPS: 30000, P99: 8},
		{Workload: "d-1M", EventsPS: 800_000},
		{Workload: "f", FirstAckMs: ptr(5000)},
		{Workload: "g", SegmentBytesPerEvent: ptr(600), RaftBytesPerEvent: ptr(300)},
	}}
	grid := table([]*Report{ts, nats})
	want := [][]string{
		{"workload", "tsstore", "nats-default (no fsync)", "tsstore/nats-default"},
		{"a 1 producer, waiting", "2,000 ev/s, p99 3.00 ms", "4,000 ev/s, p99 1.00 ms", "0.50x"},
		{"b 64 producers, waiting", "n/a", "30,000 ev/s, p99 8.00 ms", "n/a"},
		{"c 1 producer, batched+pipelined", "n/a", "n/a", "n/a"},
		{"d-1M replay all", "1,600,000 ev/s", "800,000 ev/s", "2.00x"},
		{"e replay one stream", "n/a", "n/a", "n/a"},
		{"f failover", "first ack 500 ms, back 900 ms", "first ack 5,000 ms, back n/a", "0.10x"},
		{"g disk", "300 B", "600 B (raft log 300 B)", "0.50x"},
	}
	if len(grid) != len(want) {
		t.Fatalf("got %d rows, want %d:\n%q", len(grid), len(want), grid)
	}
	for i := range want {
		if strings.Join(grid[i], "|") != strings.Join(want[i], "|") {
			t.Errorf("row %d:\n got %q\nwant %q", i, grid[i], want[i])
		}
	}
}

func TestOrderSortsLogSizes(t *testing.T) {
	grid := table([]*Report{{System: "etcd", Results: []Result{
		{Workload: "g"}, {Workload: "e-scan"}, {Workload: "d-10M"}, {Workload: "d-100k"}, {Workload: "d-1M"}, {Workload: "a"},
	}}})
	var ids []string
	for _, row := range grid[1:] {
		ids = append(ids, strings.Fields(row[0])[0])
	}
	if got, want := strings.Join(ids, ","), "a,b,c,d-100k,d-1M,d-10M,e,e-scan,f,g"; got != want {
		t.Errorf("order %s, want %s", got, want)
	}
}

// The bare array that `tsstore bench --out` wrote before the append
// workloads is read as a tsstore report.
func TestReadOldBenchArray(t *testing.T) {
	p := filepath.Join(t.TempDir(), "tsstore.json")
	old := `[{"workload":"replay all from 0","events":1000000,"seconds":0.6,"events_per_sec":1674802,"mb_per_sec":428.7,"note":"1000000"},
{"workload":"replay one stream (index)","events":10000,"seconds":0.01,"events_per_sec":1020649,"mb_per_sec":261.3,"note":"1000000"},
{"workload":"same stream, full scan+filter","events":10000,"seconds":0.15,"events_per_sec":67454,"mb_per_sec":17.3,"note":"1000000"}]`
	if err := os.WriteFile(p, []byte(old), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := readReport(p)
	if err != nil {
		t.Fatal(err)
	}
	if r.System != "tsstore" || len(r.Results) != 2 || r.Results[0].Workload != "d-1M" || r.Results[1].Workload != "e" {
		t.Fatalf("got %+v", r)
	}
}

func TestCompareMarkdown(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "etcd.json")
	if err := writeReport(p, &Report{System: "etcd", Results: []Result{{Workload: "a", EventsPS: 900, P99: 2.5}}}); err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := compareCmd([]string{"--markdown", p}, &b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, s := range []string{"| workload | etcd |", "|---|---:|", "| a 1 producer, waiting | 900 ev/s, p99 2.50 ms |", "* etcd: acknowledges after"} {
		if !strings.Contains(out, s) {
			t.Errorf("markdown lacks %q:\n%s", s, out)
		}
	}
}

func TestMergeSameSystem(t *testing.T) {
	replay := &Report{System: "tsstore", Machine: map[string]any{"cores": 2}, Results: []Result{{Workload: "d-1M", EventsPS: 1}, {Workload: "g"}}}
	appends := &Report{System: "tsstore", Results: []Result{{Workload: "a", EventsPS: 2}, {Workload: "d-1M", EventsPS: 3}}}
	other := &Report{System: "etcd", Results: []Result{{Workload: "a"}}}
	m := merge([]*Report{replay, other, appends})
	if len(m) != 2 || m[0].System != "tsstore" || m[1].System != "etcd" {
		t.Fatalf("merged systems %v", m)
	}
	var ids []string
	for _, r := range m[0].Results {
		ids = append(ids, fmt.Sprintf("%s=%g", r.Workload, r.EventsPS))
	}
	if got, want := strings.Join(ids, ","), "d-1M=3,g=0,a=2"; got != want {
		t.Errorf("merged results %s, want %s", got, want)
	}
	if len(replay.Results) != 2 {
		t.Errorf("merge changed its input")
	}
}
