package main

import (
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"
)

// Report is one system's run, in the shape `tsstore bench --json` writes.
type Report struct {
	System  string         `json:"system"`
	Machine map[string]any `json:"machine"`
	Config  map[string]any `json:"config"`
	Results []Result       `json:"results"`
}

// Result is one workload's row. Workload ids: a, b, c, d-1M, d-10M, e, f, g.
type Result struct {
	Workload string  `json:"workload"`
	Name     string  `json:"name"`
	Events   int     `json:"events"`
	Seconds  float64 `json:"seconds"`
	EventsPS float64 `json:"events_per_sec"`
	MBPS     float64 `json:"mb_per_sec"`
	P50      float64 `json:"p50_ms,omitempty"`
	P99      float64 `json:"p99_ms,omitempty"`
	P999     float64 `json:"p999_ms,omitempty"`
	Note     string  `json:"note,omitempty"`

	// f only: milliseconds from the kill to the first acknowledged write
	// sent after it, and until throughput is back (see failover.go).
	FirstAckMs  *float64 `json:"first_ack_ms,omitempty"`
	RecoveredMs *float64 `json:"recovered_ms,omitempty"`

	// g only: bytes on disk per stored event, per node.
	SegmentBytesPerEvent *float64 `json:"segment_bytes_per_event,omitempty"`
	RaftBytesPerEvent    *float64 `json:"raft_bytes_per_event,omitempty"`
}

// throughput fills a Result from a count, payload bytes and elapsed time.
func throughput(id, name string, events, size int, el time.Duration) Result {
	s := el.Seconds()
	r := Result{Workload: id, Name: name, Events: events, Seconds: s}
	if s > 0 {
		r.EventsPS = float64(events) / s
		r.MBPS = float64(events) * float64(size) / s / 1e6
	}
	return r
}

// withLatency sets the percentiles from per-event acknowledgement latencies.
func (r Result) withLatency(lats []time.Duration) Result {
	if len(lats) == 0 {
		return r
	}
	slices.Sort(lats)
	q := func(p float64) float64 {
		i := int(p * float64(len(lats)-1))
		return float64(lats[i]) / 1e6
	}
	r.P50, r.P99, r.P999 = q(0.50), q(0.99), q(0.999)
	return r
}

func ptr(f float64) *float64 { return &f }

// machine describes the host with the fields of tsstore's bench.Machine.
func machine() map[string]any {
	m := map[string]any{
		"cores":      runtime.NumCPU(),
		"go_version": runtime.Version(),
		"os":         runtime.GOOS,
		"arch":       runtime.GOARCH,
		"date":       time.Now().UTC().Format(time.RFC3339),
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m["cpu"] = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m["kernel"] = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int
		if _, err := fmt.Sscanf(string(b), "MemTotal: %d kB", &kb); err == nil {
			m["memory_gib"] = (kb + 1<<19) >> 20
		}
	}
	return m
}

func writeReport(path string, r *Report) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}
