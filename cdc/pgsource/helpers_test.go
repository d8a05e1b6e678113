package pgsource

import (
	"encoding/json"

	"context"
	"fmt"
	"github.com/jackc/pglogrepl"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tsstore/tsstore/client"
	"github.com/tsstore/tsstore/internal/pgtest"
	"github.com/tsstore/tsstore/internal/storetest"
)

// env is a PostgreSQL server and a tsstore cluster.
type env struct {
	pg    *pgtest.Server
	store *storetest.Cluster
}

func newEnv(t *testing.T) *env {
	t.Helper()
	return &env{pg: pgtest.Start(t), store: storetest.Start(t, 1)}
}

func (e *env) config(snapshot bool) Config {
	cfg := DefaultConfig()
	cfg.ConnString = e.pg.DSN("postgres")
	cfg.Slot = "tsstore_test"
	cfg.Publication = "pub"
	cfg.Snapshot = snapshot
	cfg.StatusInterval = 100 * time.Millisecond
	cfg.ReconnectBackoff = 100 * time.Millisecond
	return cfg
}

// running is a Source running in the background.
type running struct {
	src    *Source
	cancel context.CancelFunc
	done   chan error
}

func (e *env) run(t *testing.T, cfg Config) *running {
	t.Helper()
	src, err := New(cfg, e.store.Client)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{src: src, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- src.Run(ctx) }()
	t.Cleanup(func() { r.stop() })
	return r
}

// stop cancels the source and waits for Run to return.
func (r *running) stop() error {
	r.cancel()
	err, ok := <-r.done
	if !ok {
		return nil
	}
	close(r.done)
	return err
}

// captured is what the connector wrote, read back from tsstore.
type captured struct {
	markers []client.RecordedEvent            // of the database's stream, in order
	rows    []client.RecordedEvent            // row and schema events of the table streams, in order
	changes map[uint64]*Change                // by offset, for row events
	schemas map[uint64]*Schema                // by offset
	byRaft  map[uint64][]client.RecordedEvent // every event by Raft entry
}

func read(t *testing.T, cl *client.Client) *captured {
	t.Helper()
	c := &captured{changes: map[uint64]*Change{}, schemas: map[uint64]*Schema{}, byRaft: map[uint64][]client.RecordedEvent{}}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for ev, err := range cl.Replay(ctx, 0, client.StreamPrefix("cdc/postgres")) {
		if err != nil {
			t.Fatal(err)
		}
		c.byRaft[ev.RaftIndex] = append(c.byRaft[ev.RaftIndex], ev)
		switch ev.Type {
		case TypeTransaction, TypeSlotCreated, TypeSnapshotChunk, TypeSnapshotCompleted:
			if ev.Stream != "cdc/postgres" {
				t.Fatalf("marker %s in stream %s", ev.Type, ev.Stream)
			}
			c.markers = append(c.markers, ev)
		case TypeSchema:
			s, err := DecodeSchema(ev.Payload)
			if err != nil {
				t.Fatal(err)
			}
			c.schemas[ev.Offset] = s
			c.rows = append(c.rows, ev)
		default:
			ch, err := DecodeChange(ev.Payload)
			if err != nil {
				t.Fatal(err)
			}
			c.changes[ev.Offset] = ch
			c.rows = append(c.rows, ev)
		}
	}
	return c
}

// waitFor reads until cond holds for what was captured.
func waitFor(t *testing.T, cl *client.Client, what string, cond func(*captured) bool) *captured {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		c := read(t, cl)
		if cond(c) {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s: %d markers, %d row events", what, len(c.markers), len(c.rows))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// checkAtomic checks that every append holds whole transactions: the
// events of one Raft entry end with their marker, and every row event's
// commit LSN matches it.
func checkAtomic(t *testing.T, c *captured) {
	t.Helper()
	for idx, evs := range c.byRaft {
		var open []client.RecordedEvent
		for _, ev := range evs {
			if ev.Stream == "cdc/postgres" {
				m, err := DecodeMarker(ev.Payload)
				if err != nil {
					t.Fatal(err)
				}
				for _, r := range open {
					if ch := c.changes[r.Offset]; ch != nil && ch.CommitLSN != fmtLSN(m.CommitLSN) {
						t.Fatalf("raft entry %d: row at %d has commit LSN %s, its marker %s", idx, r.Offset, ch.CommitLSN, fmtLSN(m.CommitLSN))
					}
				}
				open = nil
				continue
			}
			open = append(open, ev)
		}
		if len(open) > 0 {
			t.Fatalf("raft entry %d: %d events after the last marker (a transaction split across appends)", idx, len(open))
		}
	}
}

// writeTxs commits n transactions, transaction i inserting rows
// (first-1+i)*per+1 .. (first+i)*per into a and row first+i into b, and
// returns the first error.
func writeTxs(ctx context.Context, dsn string, first, n, per int) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	for i := range n {
		tx, err := conn.Begin(ctx)
		if err != nil {
			return err
		}
		base := (first-1+i)*per + 1
		if _, err := tx.Exec(ctx, "INSERT INTO a (id, name) SELECT g, 'row ' || g FROM generate_series($1::int, $2::int) g", base, base+per-1); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "INSERT INTO b (id, v) VALUES ($1, $2)", first+i, float64(i)/2); err != nil {
			return err
		}
		if err := tx.Commit(ctx); err != nil {
			return err
		}
	}
	return nil
}

// checkOnce checks that the inserts into a and b are captured exactly
// once each, in commit order (ids increase), and that every transaction
// is in one Raft entry with its marker.
func checkOnce(t *testing.T, c *captured, wantA, wantB int) {
	t.Helper()
	checkAtomic(t, c)
	seen := map[string]bool{}
	last := map[string]int64{}
	raftOf := map[string]uint64{}
	for _, ev := range c.rows {
		ch := c.changes[ev.Offset]
		if ch == nil || (ch.Op != OpInsert && ch.Op != OpSnapshot) {
			continue
		}
		id := ch.New["id"].(int64)
		key := fmt.Sprintf("%s/%d", ch.Table, id)
		if seen[key] {
			t.Fatalf("%s captured twice (offset %d)", key, ev.Offset)
		}
		seen[key] = true
		if id <= last[ch.Table] {
			t.Fatalf("%s after id %d: out of commit order", key, last[ch.Table])
		}
		last[ch.Table] = id
		// The initial snapshot is written in chunks and its rows carry the
		// slot's consistent point as CommitLSN, which the first streamed
		// transaction's commit record may start at: only streamed rows
		// take part in the one-entry-per-transaction check.
		if ch.Op == OpSnapshot {
			continue
		}
		if r, ok := raftOf[ch.CommitLSN]; ok && r != ev.RaftIndex {
			t.Fatalf("transaction %s split over raft entries %d and %d", ch.CommitLSN, r, ev.RaftIndex)
		}
		raftOf[ch.CommitLSN] = ev.RaftIndex
	}
	for i := 1; i <= wantA; i++ {
		if !seen[fmt.Sprintf("public.a/%d", i)] {
			t.Fatalf("public.a/%d missing", i)
		}
	}
	for i := 1; i <= wantB; i++ {
		if !seen[fmt.Sprintf("public.b/%d", i)] {
			t.Fatalf("public.b/%d missing", i)
		}
	}
	if n := len(seen); n != wantA+wantB {
		t.Fatalf("%d rows captured, want %d", n, wantA+wantB)
	}
}

func countInserts(c *captured) int {
	n := 0
	for _, ch := range c.changes {
		if ch.Op == OpInsert || ch.Op == OpSnapshot {
			n++
		}
	}
	return n
}

const schemaAB = `CREATE TABLE a (id int PRIMARY KEY, name text);
CREATE TABLE b (id bigint PRIMARY KEY, v float8);
ALTER TABLE b REPLICA IDENTITY FULL;
CREATE PUBLICATION pub FOR TABLE a, b;`

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

func parseLSN(s string) (uint64, error) {
	l, err := pglogrepl.ParseLSN(s)
	return uint64(l), err
}
