package pgsource

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tsstore/tsstore/client"
	"github.com/tsstore/tsstore/internal/pgtest"
	"github.com/tsstore/tsstore/internal/storetest"
	"github.com/tsstore/tsstore/server"
)

// TestCaptureTypedChangesAndSchema: a snapshot of existing rows, then
// inserts, updates, deletes and a truncate over two tables in multi-table
// transactions, typed values, and an added column as SchemaChanged.
func TestCaptureTypedChangesAndSchema(t *testing.T) {
	e := newEnv(t)
	e.pg.Exec(t, "postgres",
		`CREATE TABLE ckpt (id int PRIMARY KEY, run text, step bigint, ok bool, loss float8, size numeric,
			at timestamptz, day date, sha bytea, tags text[], meta jsonb, uid uuid)`,
		`CREATE TABLE other (k text PRIMARY KEY, n int2)`,
		`ALTER TABLE other REPLICA IDENTITY FULL`,
		`INSERT INTO ckpt VALUES (1, 'r1', 10, true, 0.5, 12345678901234567890.5, '2026-01-02 03:04:05.123456+00', '2026-01-02',
			'\xdeadbeef', '{a,NULL,"b c"}', '{"x": 1}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11')`,
		`CREATE PUBLICATION pub FOR TABLE ckpt, other`)
	r := e.run(t, e.config(true))
	waitFor(t, e.store.Client, "the snapshot", func(c *captured) bool { return len(c.markers) == 1 })

	e.pg.Exec(t, "postgres",
		`BEGIN; INSERT INTO ckpt (id, run, step) VALUES (2, 'r1', 20); INSERT INTO other VALUES ('x', 7); UPDATE ckpt SET step = 11 WHERE id = 1; COMMIT`,
		`BEGIN; DELETE FROM other WHERE k = 'x'; UPDATE ckpt SET ok = NULL WHERE id = 2; COMMIT`,
		`ALTER TABLE ckpt ADD COLUMN note text`,
		`INSERT INTO ckpt (id, note) VALUES (3, 'after alter')`,
		`TRUNCATE other`)
	c := waitFor(t, e.store.Client, "four transactions", func(c *captured) bool { return len(c.markers) == 5 })
	checkAtomic(t, c)

	var got []string
	for _, ev := range c.rows {
		if ch := c.changes[ev.Offset]; ch != nil {
			got = append(got, ev.Type+" "+ch.Table)
		} else {
			got = append(got, ev.Type+" "+c.schemas[ev.Offset].Table)
		}
	}
	wantSeq := []string{
		"SchemaChanged public.ckpt", "RowSnapshot public.ckpt", "SchemaChanged public.other",
		"RowInserted public.ckpt", "RowInserted public.other", "RowUpdated public.ckpt",
		"RowDeleted public.other", "RowUpdated public.ckpt",
		"SchemaChanged public.ckpt", "RowInserted public.ckpt",
		"TableTruncated public.other",
	}
	if strings.Join(got, "\n") != strings.Join(wantSeq, "\n") {
		t.Fatalf("events:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(wantSeq, "\n"))
	}

	// Typed values of the snapshot row.
	snap := c.changes[c.rows[1].Offset]
	at := time.Date(2026, 1, 2, 3, 4, 5, 123456000, time.UTC)
	checks := map[string]any{"id": int64(1), "run": "r1", "step": int64(10), "ok": true, "loss": 0.5,
		"size": "12345678901234567890.5", "meta": `{"x": 1}`, "uid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"}
	for k, v := range checks {
		if snap.New[k] != v {
			t.Errorf("snapshot %s = %#v (%T), want %#v", k, snap.New[k], snap.New[k], v)
		}
	}
	if ts, ok := snap.New["at"].(time.Time); !ok || !ts.Equal(at) {
		t.Errorf("snapshot at = %#v, want %v", snap.New["at"], at)
	}
	if d, ok := snap.New["day"].(time.Time); !ok || !d.Equal(time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("snapshot day = %#v", snap.New["day"])
	}
	if b, ok := snap.New["sha"].([]byte); !ok || string(b) != "\xde\xad\xbe\xef" {
		t.Errorf("snapshot sha = %#v", snap.New["sha"])
	}
	if tags, ok := snap.New["tags"].([]any); !ok || len(tags) != 3 || tags[0] != "a" || tags[1] != nil || tags[2] != "b c" {
		t.Errorf("snapshot tags = %#v", snap.New["tags"])
	}
	for _, col := range snap.Columns {
		if col.Name == "id" && (!col.Key || col.Type != "int4") || col.Name == "at" && col.Type != "timestamptz" {
			t.Errorf("column %+v", col)
		}
	}

	// The first streamed transaction: three changes over two tables, in
	// one append with its marker, old values per replica identity.
	upd := c.changes[c.rows[5].Offset]
	if upd.Old["id"] != nil && upd.Old["id"] != int64(1) || upd.New["step"] != int64(11) || upd.Xid == 0 || upd.Index != 2 {
		t.Errorf("update: %+v", upd)
	}
	if _, ok := upd.Old["step"]; ok {
		t.Errorf("update's old row holds step under the default replica identity: %+v", upd.Old)
	}
	del := c.changes[c.rows[6].Offset]
	if del.Old["k"] != "x" || del.Old["n"] != int64(7) {
		t.Errorf("delete under REPLICA IDENTITY FULL: old %+v", del.Old)
	}
	ins := c.changes[c.rows[3].Offset]
	if c.rows[3].RaftIndex != c.rows[5].RaftIndex || ins.CommitLSN != upd.CommitLSN || ins.Xid != upd.Xid {
		t.Errorf("one transaction, two appends: %+v / %+v", ins, upd)
	}
	alter := c.schemas[c.rows[8].Offset]
	if n := len(alter.Columns); n != 13 || alter.Columns[12].Name != "note" || alter.Columns[12].Type != "text" {
		t.Errorf("schema after ALTER: %+v", alter.Columns)
	}
	if v := c.changes[c.rows[9].Offset].New["note"]; v != "after alter" {
		t.Errorf("note = %#v", v)
	}
	var meta map[string]any
	if err := jsonUnmarshal(c.rows[3].Metadata, &meta); err != nil || meta["commit_lsn"] != ins.CommitLSN || meta["xid"] == nil {
		t.Errorf("metadata %s: %v", c.rows[3].Metadata, err)
	}

	// The slot is confirmed up to the last acknowledged transaction.
	last, _ := DecodeMarker(c.markers[len(c.markers)-1].Payload)
	deadline := time.Now().Add(30 * time.Second)
	for r.src.Stats().ConfirmedLSN < last.EndLSN {
		if time.Now().After(deadline) {
			t.Fatalf("confirmed %s, want %s", fmtLSN(r.src.Stats().ConfirmedLSN), fmtLSN(last.EndLSN))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := r.stop(); !errors.Is(err, context.Canceled) {
		t.Fatalf("Run: %v", err)
	}
	var flushed string
	conn, err := pgx.Connect(context.Background(), e.pg.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if err := conn.QueryRow(context.Background(), "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'tsstore_test'").Scan(&flushed); err != nil {
		t.Fatal(err)
	}
	if l, _ := parseLSN(flushed); l < last.EndLSN {
		t.Fatalf("slot confirmed_flush_lsn %s below the last acknowledged end %s", flushed, fmtLSN(last.EndLSN))
	}
}

// TestUnsupportedTypeStops: a published column of a type without a typed
// encoding stops the connector with ErrUnsupportedType naming it, and
// nothing of its transaction is written.
func TestUnsupportedTypeStops(t *testing.T) {
	e := newEnv(t)
	e.pg.Exec(t, "postgres",
		`CREATE TYPE mood AS ENUM ('ok', 'sad')`,
		`CREATE TABLE a (id int PRIMARY KEY, m mood)`,
		`CREATE PUBLICATION pub FOR TABLE a`)
	r := e.run(t, e.config(false))
	waitFor(t, e.store.Client, "the slot", func(c *captured) bool { return len(c.markers) == 1 })
	e.pg.Exec(t, "postgres", `INSERT INTO a VALUES (1, 'ok')`)
	var err error
	select {
	case err = <-r.done:
		close(r.done)
	case <-time.After(60 * time.Second):
		t.Fatal("the connector did not stop")
	}
	if !errors.Is(err, ErrUnsupportedType) || !strings.Contains(err.Error(), "column m has type public.mood") {
		t.Fatalf("Run: %v", err)
	}
	c := read(t, e.store.Client)
	if len(c.markers) != 1 || len(c.rows) != 0 {
		t.Fatalf("written after the error: %d markers, %d row events", len(c.markers), len(c.rows))
	}
	// At start the snapshot refuses the table too.
	e2 := newEnv(t)
	e2.pg.Exec(t, "postgres", `CREATE TABLE a (id int PRIMARY KEY, p point)`, `CREATE PUBLICATION pub FOR TABLE a`)
	r2 := e2.run(t, e2.config(true))
	select {
	case err = <-r2.done:
		close(r2.done)
	case <-time.After(60 * time.Second):
		t.Fatal("the connector did not stop")
	}
	if !errors.Is(err, ErrUnsupportedType) || !strings.Contains(err.Error(), "column p has type point (oid 600)") {
		t.Fatalf("Run: %v", err)
	}
}

// TestSnapshotSwitchNoGapNoDuplicate: rows are inserted while the
// connector starts; every row is captured once, by the snapshot or the
// stream.
func TestSnapshotSwitchNoGapNoDuplicate(t *testing.T) {
	e := newEnv(t)
	e.pg.Exec(t, "postgres", schemaAB)
	ctx := context.Background()
	if err := writeTxs(ctx, e.pg.DSN("postgres"), 1, 50, 10); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- writeTxs(ctx, e.pg.DSN("postgres"), 51, 150, 10) }()
	e.run(t, e.config(true))
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	c := waitFor(t, e.store.Client, "every row", func(c *captured) bool { return countInserts(c) >= 2000+200 })
	checkOnce(t, c, 2000, 200)
}

// TestRestartsExactlyOnce: the connector is stopped and started again
// (new Source, as a new process would) and PostgreSQL is restarted, once
// stopped and once crashed, while transactions commit: every row once, in
// commit order, no transaction split.
func TestRestartsExactlyOnce(t *testing.T) {
	e := newEnv(t)
	e.pg.Exec(t, "postgres", schemaAB)
	cfg := e.config(true)
	r := e.run(t, cfg)
	ctx := context.Background()
	dsn := e.pg.DSN("postgres")
	const per = 5
	next := 1
	batch := func(n int) {
		t.Helper()
		if err := writeTxs(ctx, dsn, next, n, per); err != nil {
			t.Fatal(err)
		}
		next += n
	}
	batch(40)
	waitFor(t, e.store.Client, "some rows", func(c *captured) bool { return countInserts(c) > 0 })
	r.stop()
	batch(40) // while the connector is down
	r = e.run(t, cfg)
	batch(40)
	e.pg.Stop()
	if err := e.pg.Restart(); err != nil {
		t.Fatal(err)
	}
	batch(40)
	e.pg.Crash()
	if err := e.pg.Restart(); err != nil {
		t.Fatal(err)
	}
	batch(40)
	txs := next - 1
	c := waitFor(t, e.store.Client, "every row", func(c *captured) bool { return countInserts(c) >= txs*(per+1) })
	checkOnce(t, c, txs*per, txs)
	// Reconnects re-send the relation messages; the schema is written once
	// per table all the same (it did not change).
	schemas := map[string]int{}
	for _, sc := range c.schemas {
		schemas[sc.Table]++
	}
	if schemas["public.a"] != 1 || schemas["public.b"] != 1 {
		t.Fatalf("SchemaChanged per table: %v, want one each", schemas)
	}
	if s := r.src.Stats(); s.Sessions < 2 {
		t.Fatalf("sessions %d: the PostgreSQL restarts did not end a session", s.Sessions)
	}
}

// TestProducerForgotten: tsstore forgets the connector's producer after
// producer-ttl without appends; the next transaction is still captured
// (the producer starts again at sequence 1), once.
func TestProducerForgotten(t *testing.T) {
	pg := pgtest.Start(t)
	store := storetest.StartWith(t, 1, func(c *server.Config) { c.ProducerTTL = time.Second })
	e := &env{pg: pg, store: store}
	e.pg.Exec(t, "postgres", schemaAB)
	cfg := e.config(false)
	r := e.run(t, cfg)
	waitFor(t, store.Client, "the slot", func(c *captured) bool { return len(c.markers) == 1 })
	ctx := context.Background()
	if err := writeTxs(ctx, e.pg.DSN("postgres"), 1, 3, 2); err != nil {
		t.Fatal(err)
	}
	waitFor(t, store.Client, "three transactions", func(c *captured) bool { return len(c.markers) == 4 })
	r.stop()
	time.Sleep(2 * time.Second) // past the TTL; the next append sweeps the producer away
	if _, err := store.Client.Append(ctx, client.Event{Stream: "other", Type: "Tick"}); err != nil {
		t.Fatal(err)
	}
	e.run(t, cfg)
	if err := writeTxs(ctx, e.pg.DSN("postgres"), 4, 3, 2); err != nil {
		t.Fatal(err)
	}
	c := waitFor(t, store.Client, "six transactions", func(c *captured) bool { return len(c.markers) == 7 })
	checkOnce(t, c, 12, 6)
}
