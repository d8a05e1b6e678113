package pgsink

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tsstore/tsstore/client"
	"github.com/tsstore/tsstore/client/train"
	"github.com/tsstore/tsstore/internal/pgtest"
	"github.com/tsstore/tsstore/internal/storetest"
)

func startSink(t *testing.T, cfg Config, cl *client.Client) (*Sink, context.CancelFunc, chan error) {
	t.Helper()
	s, err := New(cfg, cl)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx); close(done) }() // later receives get nil
	t.Cleanup(func() { cancel(); <-done })
	return s, cancel, done
}

func connect(t *testing.T, pg *pgtest.Server) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), pg.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// waitOffset waits until the sink's stored offset reaches next.
func waitOffset(t *testing.T, conn *pgx.Conn, name string, next uint64) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		var got int64
		err := conn.QueryRow(context.Background(), "SELECT next_offset FROM tsstore_sink_offsets WHERE sink = $1", name).Scan(&got)
		if err == nil && uint64(got) >= next {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("sink %s offset %d (%v), want %d", name, got, err, next)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestTrainingAgreement: checkpoints per rank from a run's stream, and
// the agreement query for a step all ranks saved alike, one with a
// diverging hash, and one a rank did not save.
func TestTrainingAgreement(t *testing.T) {
	pg := pgtest.Start(t)
	store := storetest.Start(t, 1)
	ctx := context.Background()
	run := "run/bert-1"
	var evs []client.Event
	add := func(e train.Event) {
		ev, err := client.TrainEvent(run, e)
		if err != nil {
			t.Fatal(err)
		}
		evs = append(evs, ev)
	}
	add(train.TrainingStarted{Model: "bert", ConfigHash: "c1", WorldSize: 3})
	for rank := range 3 {
		add(train.BatchCompleted{Rank: rank, Step: 100}) // not selected by the sink
		add(train.CheckpointSaved{Step: 100, Rank: rank, URI: fmt.Sprintf("s3://b/100/%d", rank), Size: 10, SHA256: "aaa"})
		hash := "bbb"
		if rank == 2 {
			hash = "ccc"
		}
		add(train.CheckpointSaved{Step: 200, Rank: rank, URI: "u", Size: 10, SHA256: hash})
		if rank < 2 {
			add(train.CheckpointSaved{Step: 300, Rank: rank, URI: "u", Size: 10, SHA256: "ddd"})
		}
	}
	add(train.TrainingFinished{Step: 300, Reason: "done"})
	res, err := store.Client.Append(ctx, evs...)
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.ConnString, cfg.Mode, cfg.StreamPrefix, cfg.Name = pg.DSN("postgres"), ModeTraining, "run/", "train"
	startSink(t, cfg, store.Client)
	conn := connect(t, pg)
	waitOffset(t, conn, "train", res.LastOffset+1)
	for _, c := range []struct {
		step          uint64
		ranks, hashes int
		agreed, ok    bool
	}{{100, 3, 1, true, true}, {200, 3, 2, false, true}, {300, 2, 1, false, true}, {400, 0, 0, false, false}} {
		ranks, hashes, agreed, ok, err := Agreement(ctx, conn, run, c.step)
		if err != nil {
			t.Fatal(err)
		}
		if ranks != c.ranks || hashes != c.hashes || agreed != c.agreed || ok != c.ok {
			t.Errorf("step %d: ranks %d hashes %d agreed %v ok %v; want %+v", c.step, ranks, hashes, agreed, ok, c)
		}
	}
	var status string
	var last int64
	if err := conn.QueryRow(ctx, "SELECT status, last_checkpoint_step FROM tsstore_runs WHERE run = $1", run).Scan(&status, &last); err != nil {
		t.Fatal(err)
	}
	if status != "finished" || last != 300 {
		t.Fatalf("run row: %s %d", status, last)
	}
}

// TestEventsExactlyOnce: the sink is stopped and restarted, and
// PostgreSQL crashes under it, while events are appended; the table holds
// every event of the stream exactly once.
func TestEventsExactlyOnce(t *testing.T) {
	pg := pgtest.Start(t)
	store := storetest.Start(t, 1)
	ctx := context.Background()
	var offsets []uint64
	appendN := func(n int) uint64 {
		t.Helper()
		var last uint64
		for i := range n {
			res, err := store.Client.Append(ctx, client.Event{Stream: "orders/1", Type: "Placed", Payload: []byte(fmt.Sprint(len(offsets)))},
				client.Event{Stream: "other", Type: "Noise"}, client.Event{Stream: "orders/2", Type: "Placed", Payload: []byte{byte(i)}})
			if err != nil {
				t.Fatal(err)
			}
			offsets = append(offsets, res.FirstOffset, res.FirstOffset+2)
			last = res.LastOffset
		}
		return last
	}
	cfg := DefaultConfig()
	cfg.ConnString, cfg.StreamPrefix, cfg.Name, cfg.BatchEvents = pg.DSN("postgres"), "orders/", "orders", 7
	appendN(50)
	_, cancel, done := startSink(t, cfg, store.Client)
	last := appendN(50)
	conn := connect(t, pg)
	waitOffset(t, conn, "orders", last)
	cancel()
	<-done
	appendN(50)
	_, _, done = startSink(t, cfg, store.Client)
	appendN(50)
	pg.Crash()
	appendN(50) // the sink fails applying these
	if err := <-done; err == nil {
		t.Fatal("Run returned nil after PostgreSQL went away")
	}
	if err := pg.Restart(); err != nil {
		t.Fatal(err)
	}
	last = appendN(50)
	startSink(t, cfg, store.Client)
	conn = connect(t, pg)
	waitOffset(t, conn, "orders", last)
	rows, err := conn.Query(ctx, `SELECT "offset" FROM tsstore_events ORDER BY "offset"`)
	if err != nil {
		t.Fatal(err)
	}
	got, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(offsets) {
		t.Fatalf("%d rows, want %d", len(got), len(offsets))
	}
	for i, o := range offsets {
		if uint64(got[i]) != o {
			t.Fatalf("row %d has offset %d, want %d", i, got[i], o)
		}
	}
}

// TestUndecodableStops: a training event the sink cannot decode stops it
// with ErrUndecodable, and the offset stays before it.
func TestUndecodableStops(t *testing.T) {
	pg := pgtest.Start(t)
	store := storetest.Start(t, 1)
	ctx := context.Background()
	good, err := client.TrainEvent("run/x", train.TrainingStarted{Model: "m", WorldSize: 1})
	if err != nil {
		t.Fatal(err)
	}
	res, err := store.Client.Append(ctx, good)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Client.Append(ctx, client.Event{Stream: "run/x", Type: "CheckpointSaved", Payload: []byte("not msgpack")}); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.ConnString, cfg.Mode, cfg.StreamPrefix, cfg.Name, cfg.BatchEvents = pg.DSN("postgres"), ModeTraining, "run/", "t", 1
	_, _, done := startSink(t, cfg, store.Client)
	select {
	case err = <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("the sink did not stop")
	}
	if !errors.Is(err, ErrUndecodable) {
		t.Fatalf("Run: %v", err)
	}
	var next int64
	if err := connect(t, pg).QueryRow(ctx, "SELECT next_offset FROM tsstore_sink_offsets WHERE sink = 't'").Scan(&next); err != nil {
		t.Fatal(err)
	}
	if uint64(next) != res.LastOffset+1 {
		t.Fatalf("offset %d, want %d (after the good event, before the bad one)", next, res.LastOffset+1)
	}
}
