package jepsen

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// scrapeTier reads the node-labelled tier samples (the first version
// skipped every labelled line and saw only zeros).
func TestScrapeTierReadsNodeLabelledSamples(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `# HELP tsstore_tier_failures_total Tiering attempts that failed.
# TYPE tsstore_tier_failures_total counter
tsstore_tier_failures_total{node="n1"} 3
tsstore_tier_backlog_segments{node="n1"} 4
tsstore_tier_evicted_segments_total{node="n1"} 1.2e+01
tsstore_tier_get_duration_seconds_bucket{le="0.1",node="n1"} 7
tsstore_append_total{node="n1"} 99
`)
	}))
	defer srv.Close()
	v, err := scrapeTier(&http.Client{Timeout: time.Second}, strings.TrimPrefix(srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int64{"tsstore_tier_failures_total": 3, "tsstore_tier_backlog_segments": 4, "tsstore_tier_evicted_segments_total": 12}
	if len(v) != len(want) {
		t.Fatalf("scraped %v, want %v", v, want)
	}
	for k, n := range want {
		if v[k] != n {
			t.Errorf("%s = %d, want %d (all: %v)", k, v[k], n, v)
		}
	}
}

// The store proxy keeps the Host header (the nodes' SigV4 signatures
// cover it), delays, answers 500 when told to, and 502 when the store is
// gone.
func TestStoreProxy(t *testing.T) {
	var host string
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host = r.Host
		io.WriteString(w, "ok")
	}))
	p, err := newStoreProxy(strings.TrimPrefix(backend.URL, "http://"), 1)
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	get := func() (int, time.Duration) {
		t.Helper()
		start := time.Now()
		resp, err := http.Get("http://" + p.addr + "/bucket/key")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, time.Since(start)
	}
	if code, _ := get(); code != 200 || host != p.addr {
		t.Fatalf("healthy: %d, backend saw Host %q, want 200 and %q", code, host, p.addr)
	}
	p.set(100*time.Millisecond, 0)
	if code, d := get(); code != 200 || d < 100*time.Millisecond {
		t.Fatalf("slow: %d after %v", code, d)
	}
	p.set(0, 1)
	if code, _ := get(); code != 500 || p.injected.Load() != 1 {
		t.Fatalf("failing: %d, %d injected", code, p.injected.Load())
	}
	p.set(0, 0)
	backend.Close()
	if code, _ := get(); code != 502 || p.failed.Load() != 1 {
		t.Fatalf("store gone: %d, %d failed", code, p.failed.Load())
	}
}
