package main

import (
	"errors"
	"io"
	"testing"
	"time"
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
	if f, err := parseBenchFlags([]string{"--out", "y.json"}, io.Discard); err != nil || f.jsonOut != "y.json" || len(f.workloads) != 7 {
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
