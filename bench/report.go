package bench

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"
)

// Report is the JSON document `tsstore bench --json` writes and the peer
// benchmarks (bench/peers) write in the same shape, so results combine.
// Fields are only ever added, and optional ones are omitted when unset.
type Report struct {
	System  string         `json:"system"`
	Machine Machine        `json:"machine"`
	Config  map[string]any `json:"config"`
	Results []Result       `json:"results"`
}

// Machine describes where the benchmark ran.
type Machine struct {
	Cores     int    `json:"cores"`
	CPU       string `json:"cpu,omitempty"`
	GoVersion string `json:"go_version"`
	OS        string `json:"os"`
	Arch      string `json:"arch"`
	Kernel    string `json:"kernel,omitempty"`
	MemoryGiB int    `json:"memory_gib,omitempty"`
	Date      string `json:"date"`
}

// Result is one workload's row. Workload ids: "a", "b", "c", "d-1M",
// "d-10M", "e", "e-scan", "f", "g".
type Result struct {
	Workload string  `json:"workload"`
	Name     string  `json:"name"`
	Events   int64   `json:"events"`
	Seconds  float64 `json:"seconds"`
	EventsPS float64 `json:"events_per_sec"`
	MBPS     float64 `json:"mb_per_sec"`
	// Latency of one acknowledged operation (append or batch), when the
	// workload measures it.
	P50ms  *float64 `json:"p50_ms,omitempty"`
	P99ms  *float64 `json:"p99_ms,omitempty"`
	P999ms *float64 `json:"p999_ms,omitempty"`
	Note   string   `json:"note,omitempty"`
	// Failover (f): from the kill to the first acknowledged append, and
	// until throughput is back (see the workload's note).
	FirstAckms  *float64 `json:"first_ack_ms,omitempty"`
	Recoveredms *float64 `json:"recovered_ms,omitempty"`
	// Disk use (g): everything on disk per event, and the Raft log's share.
	SegmentBytesPerEvent *float64 `json:"segment_bytes_per_event,omitempty"`
	RaftBytesPerEvent    *float64 `json:"raft_bytes_per_event,omitempty"`
	// Memory and restart (h): the largest figure over the nodes.
	HeapInuseMB *float64 `json:"heap_inuse_mib,omitempty"`
	RSSMB       *float64 `json:"rss_mib,omitempty"`
	RestartMs   *float64 `json:"restart_ms,omitempty"`
	// Appends during compaction (k): the slowest append, what the leader
	// committed during the phase, and one raw fsync in the cluster's
	// directory to compare the added latency with.
	MaxMs             *float64 `json:"max_ms,omitempty"`
	CutsCommitted     *float64 `json:"retention_cuts,omitempty"`
	RewritesCommitted *float64 `json:"run_compaction_rewrites,omitempty"`
	ReclaimedBytes    *float64 `json:"reclaimed_bytes,omitempty"`
	FsyncP50ms        *float64 `json:"fsync_p50_ms,omitempty"`
	FsyncP99ms        *float64 `json:"fsync_p99_ms,omitempty"`
	FsyncMaxms        *float64 `json:"fsync_max_ms,omitempty"`
	// How long compaction held up the nodes' apply paths (k): holds
	// counted in the phase, their mean, and the longest since the nodes
	// started (tsstore_compaction_append_hold_seconds).
	HoldCount  *float64 `json:"compaction_holds,omitempty"`
	HoldMeanMs *float64 `json:"compaction_hold_mean_ms,omitempty"`
	HoldMaxMs  *float64 `json:"compaction_hold_max_ms,omitempty"`
	// Cold tiering (t): the share of the log's segment bytes only in the
	// tier target (the smallest over the nodes).
	TieredFraction *float64 `json:"tiered_fraction,omitempty"`
}

// F returns a pointer to v, for the optional fields.
func F(v float64) *float64 { return &v }

// Ms is d in milliseconds.
func Ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// WithLatency sets the result's quantiles from h.
func (r *Result) WithLatency(h *Histogram) {
	if h.Count() == 0 {
		return
	}
	r.P50ms, r.P99ms, r.P999ms = F(Ms(h.Quantile(0.5))), F(Ms(h.Quantile(0.99))), F(Ms(h.Quantile(0.999)))
}

// ThisMachine describes the current machine.
func ThisMachine() Machine {
	m := Machine{Cores: runtime.NumCPU(), GoVersion: runtime.Version(), OS: runtime.GOOS, Arch: runtime.GOARCH,
		Date: time.Now().UTC().Format(time.RFC3339)}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	m.CPU = procField("/proc/cpuinfo", "model name")
	if kb := procField("/proc/meminfo", "MemTotal"); kb != "" {
		var n int
		fmt.Sscan(kb, &n)
		m.MemoryGiB = (n + 1<<19) >> 20
	}
	return m
}

// procField returns the value after "key:" on the first matching line.
func procField(path, key string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		k, v, ok := strings.Cut(s.Text(), ":")
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// WriteJSON writes the report to path, indented.
func (r *Report) WriteJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// PrintTable writes the results as an aligned table.
func (r *Report) PrintTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "id\tworkload\tevents\tseconds\tevents/s\tMB/s\tp50 ms\tp99 ms\tp99.9 ms\t")
	opt := func(v *float64) string {
		if v == nil {
			return "-"
		}
		return fmt.Sprintf("%.2f", *v)
	}
	for _, x := range r.Results {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%.2f\t%.0f\t%.1f\t%s\t%s\t%s\t\n", x.Workload, x.Name, x.Events, x.Seconds,
			x.EventsPS, x.MBPS, opt(x.P50ms), opt(x.P99ms), opt(x.P999ms))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, x := range r.Results {
		var extra []string
		if x.FirstAckms != nil {
			extra = append(extra, fmt.Sprintf("first ack %.0f ms after the kill", *x.FirstAckms))
		}
		if x.Recoveredms != nil {
			extra = append(extra, fmt.Sprintf("throughput back after %.0f ms", *x.Recoveredms))
		}
		if x.SegmentBytesPerEvent != nil {
			extra = append(extra, fmt.Sprintf("on disk %.1f B/event", *x.SegmentBytesPerEvent))
		}
		if x.RaftBytesPerEvent != nil {
			extra = append(extra, fmt.Sprintf("raft log %.1f B/event", *x.RaftBytesPerEvent))
		}
		if x.HeapInuseMB != nil {
			extra = append(extra, fmt.Sprintf("heap in use %.0f MiB, RSS %.0f MiB", *x.HeapInuseMB, *x.RSSMB))
		}
		if x.RestartMs != nil {
			extra = append(extra, fmt.Sprintf("restart to SERVING %.0f ms", *x.RestartMs))
		}
		if x.MaxMs != nil {
			extra = append(extra, fmt.Sprintf("max %.2f ms", *x.MaxMs))
		}
		if x.CutsCommitted != nil {
			extra = append(extra, fmt.Sprintf("%.0f retention cuts and %.0f run-compaction rewrites committed, %.1f MiB reclaimed",
				*x.CutsCommitted, *x.RewritesCommitted, *x.ReclaimedBytes/(1<<20)))
		}
		if x.HoldCount != nil {
			mean := 0.0
			if x.HoldMeanMs != nil {
				mean = *x.HoldMeanMs
			}
			extra = append(extra, fmt.Sprintf("compaction held appends %.0f times, mean %.3f ms, longest %.2f ms", *x.HoldCount, mean, *x.HoldMaxMs))
		}
		if x.FsyncP50ms != nil {
			extra = append(extra, fmt.Sprintf("fsync p50 %.2f ms, p99 %.2f ms, max %.2f ms", *x.FsyncP50ms, *x.FsyncP99ms, *x.FsyncMaxms))
		}
		if x.Note != "" {
			extra = append(extra, x.Note)
		}
		if len(extra) > 0 {
			fmt.Fprintf(w, "%s: %s\n", x.Workload, strings.Join(extra, "; "))
		}
	}
	return nil
}
