package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// scrapeSeries reads every sample of a node's Prometheus metrics, keyed by
// the series as the text format writes it: `name{label="v",...}` (labels
// in sorted order) or `name`.
func scrapeSeries(ctx context.Context, addr string) (map[string]float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("metrics of %s: %s", addr, resp.Status)
	}
	out := map[string]float64{}
	s := bufio.NewScanner(resp.Body)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		line := s.Text()
		i := strings.LastIndexByte(line, ' ')
		if line == "" || line[0] == '#' || i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out, s.Err()
}

// seriesName is the metric name of a series key.
func seriesName(key string) string {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		return key[:i]
	}
	return key
}

// hasLabels reports whether a series key carries every `label="value"`.
func hasLabels(key string, labels ...string) bool {
	for _, l := range labels {
		if !strings.Contains(key, "{"+l) && !strings.Contains(key, ","+l) {
			return false
		}
	}
	return true
}

// labelValue is the value of one label of a series key ("" if absent).
func labelValue(key, label string) string {
	for _, sep := range []string{"{", ","} {
		if _, rest, ok := strings.Cut(key, sep+label+`="`); ok {
			v, _, _ := strings.Cut(rest, `"`)
			return v
		}
	}
	return ""
}

// sumSeries adds the samples of metric name that carry every label given.
func sumSeries(m map[string]float64, name string, labels ...string) float64 {
	var sum float64
	for key, v := range m {
		if seriesName(key) == name && hasLabels(key, labels...) {
			sum += v
		}
	}
	return sum
}

// nodeMem is one node's resident set and Go heap in use, in MiB.
type nodeMem struct{ rss, heap float64 }

// memSampler reads every node's memory from its metrics at
// hostileSampleEvery and keeps each node's largest and last figures.
type memSampler struct {
	addrs  []string
	cancel context.CancelFunc
	wg     sync.WaitGroup
	// With watch >= 0, the Read calls open on that node (since the scrape
	// before) are followed too.
	watch  int
	before map[string]float64
	start  time.Time

	mu         sync.Mutex
	peak, last []nodeMem
	failures   int
	readers    []readerPoint // when the count of open Read calls changed
}

// readerPoint is the count of Read calls open on the watched node at a
// time since sampling started.
type readerPoint struct {
	at   time.Duration
	open int
}

// sampleMemory starts sampling the local cluster's nodes; stop ends it.
func (b *benchRun) sampleMemory(ctx context.Context) *memSampler {
	return b.sampleMemoryWatching(ctx, -1, nil)
}

// sampleMemoryWatching also follows the Read calls open on node watch
// since the scrape before.
func (b *benchRun) sampleMemoryWatching(ctx context.Context, watch int, before map[string]float64) *memSampler {
	s := &memSampler{addrs: b.lc.metrics, peak: make([]nodeMem, len(b.lc.metrics)), last: make([]nodeMem, len(b.lc.metrics)),
		watch: watch, before: before, start: time.Now()}
	ctx, s.cancel = context.WithCancel(ctx)
	s.sample(ctx)
	s.wg.Go(func() {
		t := time.NewTicker(hostileSampleEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				s.sample(ctx)
			}
		}
	})
	return s
}

func (s *memSampler) sample(ctx context.Context) {
	for i, addr := range s.addrs {
		var m map[string]float64
		var err error
		if i == s.watch {
			m, err = scrapeSeries(ctx, addr)
		} else {
			m, err = scrapeMetrics(ctx, addr, "go_memstats_heap_inuse_bytes", "process_resident_memory_bytes")
		}
		s.mu.Lock()
		if i == s.watch && err == nil {
			reached, ended := readersIn(s.before, m)
			for _, n := range ended {
				reached -= n
			}
			if k := len(s.readers); k == 0 || s.readers[k-1].open != int(reached) {
				s.readers = append(s.readers, readerPoint{at: time.Since(s.start), open: int(reached)})
			}
			// Every series of a node carries its node label.
			m = map[string]float64{"process_resident_memory_bytes": sumSeries(m, "process_resident_memory_bytes"),
				"go_memstats_heap_inuse_bytes": sumSeries(m, "go_memstats_heap_inuse_bytes")}
		}
		if err != nil || m["process_resident_memory_bytes"] == 0 {
			s.failures++
		} else {
			n := nodeMem{rss: m["process_resident_memory_bytes"] / (1 << 20), heap: m["go_memstats_heap_inuse_bytes"] / (1 << 20)}
			s.last[i] = n
			s.peak[i] = nodeMem{rss: max(s.peak[i].rss, n.rss), heap: max(s.peak[i].heap, n.heap)}
		}
		s.mu.Unlock()
	}
}

// stop ends the sampling and returns each node's largest and last figures.
func (s *memSampler) stop() (peak, last []nodeMem) {
	s.cancel()
	s.wg.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peak, s.last
}

// readerTimeline sums up the watched node's open Read calls: the most
// and when, and when fewer than half of them were left afterwards.
func (s *memSampler) readerTimeline() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var top readerPoint
	for _, p := range s.readers {
		if p.open > top.open {
			top = p
		}
	}
	out := fmt.Sprintf("Read calls open on the node: up to %d (%.1f s after the attack started)", top.open, top.at.Seconds())
	for _, p := range s.readers {
		if p.at > top.at && p.open < top.open/2 {
			return out + fmt.Sprintf(", down to %d %.1f s after it started", p.open, p.at.Seconds())
		}
	}
	return out + ", no fewer than half of them later"
}

// maxMem is the largest heap and RSS over the nodes, for a Result.
func maxMem(ms []nodeMem) (heap, rss *float64) {
	for _, m := range ms {
		heap, rss = maxPtr(heap, m.heap), maxPtr(rss, m.rss)
	}
	return heap, rss
}

// memList lists each node's RSS and heap, marking node i with mark.
func (b *benchRun) memList(ms []nodeMem, i int, mark string) string {
	var parts []string
	for j, m := range ms {
		id := b.lc.c.Nodes[j].ID
		if j == i {
			id += " (" + mark + ")"
		}
		parts = append(parts, fmt.Sprintf("%s %.0f / %.0f", id, m.rss, m.heap))
	}
	return strings.Join(parts, ", ")
}
