package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/tsstore/tsstore/client"
	"github.com/tsstore/tsstore/internal/proccluster"
)

// benchResult is one row of the bench table.
type benchResult struct {
	Workload string  `json:"workload"`
	Events   int     `json:"events"`
	Seconds  float64 `json:"seconds"`
	EventsPS float64 `json:"events_per_sec"`
	MBPS     float64 `json:"mb_per_sec"`
	Note     string  `json:"note,omitempty"`
}

func runBench(args []string, stdout, stderr io.Writer) error {
	var cf clientFlags
	fs := newFlagSet("bench", stderr, "bench [--addr A | --local DIR] [--events N,...] [--stream-events N] [--size B]")
	cf.register(fs)
	fs.Lookup("addr").DefValue = ""
	cf.addrs = ""
	local := fs.String("local", "", "start a local three-node cluster with data under this directory (default when --addr is not given: a temp dir)")
	sizes := fs.String("events", "1000000", "comma-separated log sizes (events) to load and replay, cumulatively")
	streamEvents := fs.Int("stream-events", 100000, "events of the one stream replayed by itself (interleaved evenly into the log)")
	size := fs.Int("size", 256, "payload bytes per event")
	out := fs.String("out", "", "write results as JSON to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cf.timeout = 24 * time.Hour
	var counts []int
	for _, s := range strings.Split(*sizes, ",") {
		var n int
		if _, err := fmt.Sscan(s, &n); err != nil || n <= 0 {
			return fmt.Errorf("%w: --events %q", errUsage, *sizes)
		}
		counts = append(counts, n)
	}
	if cf.addrs == "" {
		stop, addrs, err := benchCluster(*local, stderr)
		if err != nil {
			return err
		}
		defer stop()
		cf.addrs = strings.Join(addrs, ",")
	}
	cl, ctx, cancel, err := cf.connect()
	if err != nil {
		return err
	}
	defer cancel()
	defer cl.Close()
	// The target stream's requests are spread evenly over the largest log,
	// so it holds about stream-events events when the last load is done.
	every := max(1, slices.Max(counts)/max(1, *streamEvents))
	b := &bencher{cl: cl, size: *size, out: stderr, every: every, target: fmt.Sprintf("run/bench-target-%d", time.Now().UnixNano())}
	var results []benchResult
	for _, n := range counts {
		if err := b.loadTo(ctx, n); err != nil {
			return err
		}
		for _, r := range []func(context.Context) (benchResult, error){b.replayAll, b.replayStream, b.replayStreamByScan} {
			res, err := r(ctx)
			if err != nil {
				return err
			}
			results = append(results, res)
		}
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "workload\tlog events\tevents\tseconds\tevents/s\tMB/s\t")
	for _, r := range results {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%.2f\t%.0f\t%.1f\t\n", r.Workload, r.Note, r.Events, r.Seconds, r.EventsPS, r.MBPS)
	}
	tw.Flush()
	if *out != "" {
		b, _ := json.MarshalIndent(results, "", "  ")
		return os.WriteFile(*out, b, 0o644)
	}
	return nil
}

func benchCluster(dir string, log io.Writer) (func(), []string, error) {
	if dir == "" {
		d, err := os.MkdirTemp("", "tsstore-bench-")
		if err != nil {
			return nil, nil, err
		}
		dir = d
	}
	dir, _ = filepath.Abs(dir)
	bin, err := os.Executable()
	if err != nil {
		return nil, nil, err
	}
	c, err := proccluster.New(proccluster.Options{Binary: bin, Dir: dir, ExtraArgs: []string{"--log-level", "warn"}})
	if err != nil {
		return nil, nil, err
	}
	if err := c.Start(); err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.WaitLeader(ctx); err != nil {
		c.Close()
		return nil, nil, err
	}
	fmt.Fprintf(log, "bench: local cluster under %s\n", dir)
	return func() { c.Close(); os.RemoveAll(dir) }, c.APIAddrs(), nil
}

type bencher struct {
	cl     *client.Client
	size   int
	out    io.Writer
	target string
	every  int // one request in every `every` goes to the target stream
	loaded int // events in the log so far
}

// loadTo appends events until the log holds n, from 4 producers sending
// requests of benchChunk events of one stream each, as trainers do: one
// request in every b.every belongs to the target stream, the others to 64
// other streams. Group commit mixes the producers' requests
// into shared Raft entries.
func (b *bencher) loadTo(ctx context.Context, n int) error {
	if n <= b.loaded {
		return nil
	}
	start := time.Now()
	const producers = 4
	targetEvery := max(1, b.every) // one target request in this many
	payload := make([]byte, b.size)
	var mu sync.Mutex
	next := b.loaded
	var wg sync.WaitGroup
	errs := make(chan error, producers)
	for range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := b.cl.NewProducer("")
			for {
				mu.Lock()
				lo := next
				hi := min(n, lo+benchChunk)
				next = hi
				mu.Unlock()
				if lo >= n {
					return
				}
				chunk := lo / benchChunk
				stream := fmt.Sprintf("run/bench-%d", chunk%64)
				if chunk%targetEvery == 0 {
					stream = b.target
				}
				evs := make([]client.Event, hi-lo)
				for i := range evs {
					evs[i] = client.Event{Stream: stream, Type: "BatchCompleted", Payload: payload}
				}
				if _, err := p.Append(ctx, evs...); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	added := n - b.loaded
	b.loaded = n
	fmt.Fprintf(b.out, "bench: log holds %d events (%d appended at %.0f events/s)\n", n, added, float64(added)/time.Since(start).Seconds())
	return nil
}

// benchChunk is the events per append request while loading.
const benchChunk = 200

func (b *bencher) measure(name string, replay func(yield func(payloadLen int)) error) (benchResult, error) {
	start := time.Now()
	var events, bytes int
	err := replay(func(n int) { events++; bytes += n })
	el := time.Since(start).Seconds()
	return benchResult{Workload: name, Events: events, Seconds: el, EventsPS: float64(events) / el,
		MBPS: float64(bytes) / el / 1e6, Note: fmt.Sprint(b.loaded)}, err
}

func (b *bencher) replayAll(ctx context.Context) (benchResult, error) {
	return b.measure("replay all from 0", func(yield func(int)) error {
		for ev, err := range b.cl.Replay(ctx, 0) {
			if err != nil {
				return err
			}
			yield(len(ev.Payload))
		}
		return nil
	})
}

func (b *bencher) replayStream(ctx context.Context) (benchResult, error) {
	return b.measure("replay one stream (index)", func(yield func(int)) error {
		for ev, err := range b.cl.Replay(ctx, 0, client.Stream(b.target)) {
			if err != nil {
				return err
			}
			yield(len(ev.Payload))
		}
		return nil
	})
}

// replayStreamByScan selects the same events with a prefix filter, which
// the server can only serve by reading the whole log.
func (b *bencher) replayStreamByScan(ctx context.Context) (benchResult, error) {
	return b.measure("same stream, full scan+filter", func(yield func(int)) error {
		for ev, err := range b.cl.Replay(ctx, 0, client.StreamPrefix(b.target)) {
			if err != nil {
				return err
			}
			yield(len(ev.Payload))
		}
		return nil
	})
}
