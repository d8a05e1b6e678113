package pgsource

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tsstore/tsstore/internal/pgtest"
	"github.com/tsstore/tsstore/internal/storetest"
)

// BenchmarkCapture measures the connector end to end on this machine:
// writers commit transactions into a real PostgreSQL at an offered rate
// (0: as fast as they can), the connector appends them to a three-node
// in-process tsstore cluster, and the benchmark reports the row changes
// per second acknowledged (rows/s; committed-rows/s is what the writers
// managed to commit, the offered load actually achieved) and the
// commit-to-ack delay (PostgreSQL's commit
// timestamp to tsstore's acknowledgement of the append) at p50, p99 and
// max. b.N is the number of row changes. docs/benchmarks.md has the
// command and the figures.
func BenchmarkCapture(b *testing.B) {
	for _, c := range []struct {
		rowsPerTx, rate, writers int
	}{{10, 10000, 4}, {1, 10000, 8}, {100, 0, 4}} {
		name := fmt.Sprintf("rows-per-tx=%d/offered=%d", c.rowsPerTx, c.rate)
		if c.rate == 0 {
			name = fmt.Sprintf("rows-per-tx=%d/offered=max", c.rowsPerTx)
		}
		b.Run(name, func(b *testing.B) { benchCapture(b, c.rowsPerTx, c.rate, c.writers) })
	}
}

func benchCapture(b *testing.B, rowsPerTx, rate, writers int) {
	pg := pgtest.Start(b)
	store := storetest.Start(b, 3)
	pg.Exec(b, "postgres", "CREATE TABLE ev (id bigint PRIMARY KEY, run text, step bigint, loss float8, at timestamptz DEFAULT now())",
		"CREATE PUBLICATION pub FOR TABLE ev")
	txs := max(b.N/rowsPerTx, writers)
	var (
		mu     sync.Mutex
		delays []time.Duration
		rows   int
		done   = make(chan struct{})
		last   time.Time
	)
	cfg := DefaultConfig()
	cfg.ConnString, cfg.Slot, cfg.Publication, cfg.Snapshot = pg.DSN("postgres"), "bench", "pub", false
	cfg.OnAck = func(commit, acked time.Time, changes int) {
		mu.Lock()
		defer mu.Unlock()
		delays = append(delays, acked.Sub(commit))
		rows += changes
		if rows >= txs*rowsPerTx && last.IsZero() {
			last = acked
			close(done)
		}
	}
	src, err := New(cfg, store.Client)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- src.Run(ctx) }()
	defer func() { cancel(); <-runErr }()
	// Wait for the slot (its SlotCreated marker) before the clock starts.
	for src.Stats().ConfirmedLSN == 0 {
		time.Sleep(10 * time.Millisecond)
	}
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := pgx.Connect(ctx, pg.DSN("postgres"))
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close(context.Background())
			var interval time.Duration
			if rate > 0 {
				interval = time.Duration(float64(time.Second) * float64(rowsPerTx*writers) / float64(rate))
			}
			for i := w; i < txs; i += writers {
				if interval > 0 {
					if d := time.Until(start.Add(time.Duration(i/writers) * interval)); d > 0 {
						time.Sleep(d)
					}
				}
				first := int64(i * rowsPerTx)
				_, err := conn.Exec(ctx, "INSERT INTO ev (id, run, step, loss) SELECT g, 'run-1', g, g * 0.001 FROM generate_series($1::bigint, $2::bigint) g",
					first, first+int64(rowsPerTx)-1)
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	committed := time.Since(start)
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	select {
	case <-done:
	case err := <-runErr:
		b.Fatalf("connector stopped: %v", err)
	}
	b.StopTimer()
	mu.Lock()
	defer mu.Unlock()
	slices.Sort(delays)
	q := func(p float64) float64 { return float64(delays[int(p*float64(len(delays)-1))].Microseconds()) / 1000 }
	elapsed := last.Sub(start)
	b.ReportMetric(float64(rows)/elapsed.Seconds(), "rows/s")
	b.ReportMetric(float64(txs*rowsPerTx)/committed.Seconds(), "committed-rows/s") // what the writers achieved
	b.ReportMetric(q(0.5), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
	b.ReportMetric(q(1), "max-ms")
	b.ReportMetric(float64(len(delays)), "txs")
}
