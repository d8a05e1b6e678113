package systemtest

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tsstore/tsstore/client"
	"github.com/tsstore/tsstore/internal/pgtest"
)

// TestSinkPostgresKilled: `tsstore sink postgres` copies a stream's
// events into a table while appends go on; the sink process is SIGKILLed
// twice and restarted. The table holds every event exactly once.
func TestSinkPostgresKilled(t *testing.T) {
	c := startCluster(t)
	pg := pgtest.Start(t)
	cl := newClient(t, c.APIAddrs())
	ctx := context.Background()
	sink := startProc(t, "sink", "sink", "postgres", "--addr", strings.Join(c.APIAddrs(), ","), "--pg", pg.DSN("postgres"),
		"--name", "orders", "--stream-prefix", "orders/", "--batch-events", "50", "--log-format", "text")
	conn, err := pgx.Connect(ctx, pg.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	applied := func() int64 {
		var n int64
		_ = conn.QueryRow(ctx, "SELECT COALESCE(max(next_offset), 0) FROM tsstore_sink_offsets WHERE sink = 'orders'").Scan(&n)
		return n
	}
	var want []uint64
	var last uint64
	for round := range 3 {
		for i := range 400 {
			res, err := cl.Append(ctx, client.Event{Stream: fmt.Sprintf("orders/%d", i%3), Type: "Placed", Payload: []byte(fmt.Sprint(i))},
				client.Event{Stream: "noise", Type: "Noise"})
			if err != nil {
				t.Fatal(err)
			}
			want = append(want, res.FirstOffset)
			last = res.LastOffset
			if i == 200 && round < 2 {
				// kill it mid-way once it has applied something of this round
				deadline := time.Now().Add(time.Minute)
				for applied() <= int64(want[len(want)-150]) {
					if time.Now().After(deadline) {
						t.Fatalf("sink stuck at offset %d", applied())
					}
					time.Sleep(5 * time.Millisecond)
				}
				sink.kill()
				sink.start()
			}
		}
	}
	deadline := time.Now().Add(time.Minute)
	for applied() < int64(last) {
		if time.Now().After(deadline) {
			t.Fatalf("sink at offset %d, want %d", applied(), last)
		}
		time.Sleep(20 * time.Millisecond)
	}
	rows, err := conn.Query(ctx, `SELECT "offset" FROM tsstore_events ORDER BY "offset"`)
	if err != nil {
		t.Fatal(err)
	}
	got, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("%d rows, want %d", len(got), len(want))
	}
	for i := range want {
		if uint64(got[i]) != want[i] {
			t.Fatalf("row %d: offset %d, want %d", i, got[i], want[i])
		}
	}
}
