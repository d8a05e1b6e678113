package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestHistogramQuantilesWithinOnePercent(t *testing.T) {
	var h Histogram
	vals := make([]time.Duration, 0, 100000)
	for range 100000 {
		v := time.Duration(rand.ExpFloat64() * float64(2*time.Millisecond))
		vals = append(vals, v)
		h.Record(v)
	}
	slices.Sort(vals)
	for _, q := range []float64{0.5, 0.9, 0.99, 0.999} {
		want := vals[int(q*float64(len(vals)))-1]
		got := h.Quantile(q)
		if d := float64(got-want) / float64(want); d > 0.01 || d < -0.01 {
			t.Errorf("q%.3f = %v, want %v (within 1%%)", q, got, want)
		}
	}
	if h.Count() != 100000 || h.Max() != vals[len(vals)-1] {
		t.Errorf("count %d max %v", h.Count(), h.Max())
	}
	var m Histogram
	m.Merge(&h)
	m.Merge(&h)
	if m.Count() != 200000 || m.Quantile(0.5) != h.Quantile(0.5) {
		t.Errorf("merged: count %d p50 %v, want 200000 and %v", m.Count(), m.Quantile(0.5), h.Quantile(0.5))
	}
	vs, fr := h.CDF()
	if len(vs) == 0 || fr[len(fr)-1] != 1 || !slices.IsSorted(vs) {
		t.Errorf("CDF ends at %v, values sorted %v", fr[len(fr)-1], slices.IsSorted(vs))
	}
}

func TestHistogramBucketsAreMonotonic(t *testing.T) {
	prev := -1
	for v := int64(0); v < 1<<40; v = v*9/8 + 1 {
		b := histBucket(v)
		if b < prev || b >= histBuckets {
			t.Fatalf("bucket(%d) = %d after %d", v, b, prev)
		}
		if mid := histValue(b); float64(mid-v) > 0.01*float64(v)+1 || float64(v-mid) > 0.01*float64(v)+1 {
			t.Fatalf("value %d lands in bucket %d whose middle is %d", v, b, mid)
		}
		prev = b
	}
}

func TestRunCountsEveryAcknowledgedEvent(t *testing.T) {
	var during bool
	st := Run{Workers: 4, Duration: 300 * time.Millisecond, Bucket: 10 * time.Millisecond,
		During: func(ctx context.Context, tl *Timeline) { during = tl != nil }}.Do(context.Background(),
		func(ctx context.Context, w int) (int, error) {
			time.Sleep(time.Millisecond)
			return 3, nil
		})
	var sum int64
	for _, c := range st.Timeline.Counts() {
		sum += c
	}
	if st.Events == 0 || sum != st.Events || st.Events != 3*st.Ops || int64(st.Latency.Count()) != st.Ops {
		t.Fatalf("events %d, timeline %d, ops %d, latencies %d", st.Events, sum, st.Ops, st.Latency.Count())
	}
	if !during {
		t.Fatal("During was not called with the timeline")
	}
}

func TestReportJSONShape(t *testing.T) {
	var h Histogram
	h.Record(2 * time.Millisecond)
	r := Result{Workload: "f", Name: "failover", Events: 10, Seconds: 1, EventsPS: 10, MBPS: 0.01, FirstAckms: F(700)}
	r.WithLatency(&h)
	rep := Report{System: "tsstore", Machine: ThisMachine(), Config: map[string]any{"event_bytes": 256}, Results: []Result{r, {Workload: "g", SegmentBytesPerEvent: F(300)}}}
	path := filepath.Join(t.TempDir(), "r.json")
	if err := rep.WriteJSON(path); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	var got map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	m := got["machine"].(map[string]any)
	if got["system"] != "tsstore" || m["cores"].(float64) < 1 || m["go_version"] == "" {
		t.Fatalf("header: %s", b)
	}
	res := got["results"].([]any)
	f := res[0].(map[string]any)
	for _, k := range []string{"workload", "name", "events", "seconds", "events_per_sec", "mb_per_sec", "p50_ms", "p99_ms", "p999_ms", "first_ack_ms"} {
		if _, ok := f[k]; !ok {
			t.Errorf("result f lacks %q: %v", k, f)
		}
	}
	if _, ok := f["recovered_ms"]; ok {
		t.Errorf("unset recovered_ms is present: %v", f)
	}
	if g := res[1].(map[string]any); g["segment_bytes_per_event"] != 300.0 {
		t.Errorf("result g: %v", g)
	}
	var tab bytes.Buffer
	if err := rep.PrintTable(&tab); err != nil || !strings.Contains(tab.String(), "first ack 700 ms") {
		t.Errorf("table: %v\n%s", err, tab.String())
	}
}

func TestPlotsArePNGs(t *testing.T) {
	dir := t.TempDir()
	tl := NewTimeline(100 * time.Millisecond)
	for i := range 30 {
		tl.Add(tl.Start().Add(time.Duration(i)*100*time.Millisecond), 1000+i)
	}
	var h Histogram
	for i := range 1000 {
		h.Record(time.Duration(i) * time.Microsecond)
	}
	tp, lp := filepath.Join(dir, "t.png"), filepath.Join(dir, "l.png")
	if err := PlotTimeline(tp, "t", tl, Marker{At: time.Second, Label: "kill"}); err != nil {
		t.Fatal(err)
	}
	if err := PlotLatencyCDF(lp, "l", []string{"a"}, []*Histogram{&h}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{tp, lp} {
		b, err := os.ReadFile(p)
		if err != nil || !bytes.HasPrefix(b, []byte("\x89PNG")) {
			t.Fatalf("%s: %v, not a PNG", p, err)
		}
	}
	if err := PlotLatencyCDF(lp, "l", []string{"a"}, []*Histogram{{}}); err == nil {
		t.Fatal("empty latency plot did not fail")
	}
}

func TestProgressIsQuietOffTerminal(t *testing.T) {
	var buf bytes.Buffer
	p := NewProgress(&buf)
	p.Line("x")
	p.Track("y", time.Second, func() int64 { return 1 })()
	if p != nil || buf.Len() != 0 {
		t.Fatalf("progress wrote %q to a non-terminal", buf.String())
	}
}
