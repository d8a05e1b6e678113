package systemtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tsstore/tsstore/cdc/pgsource"
	"github.com/tsstore/tsstore/client"
	"github.com/tsstore/tsstore/internal/pgtest"
)

// proc is a `tsstore` subcommand running as its own process.
type proc struct {
	t    *testing.T
	args []string
	log  string
	cmd  *exec.Cmd
	done chan struct{}
}

func startProc(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, args: args, log: filepath.Join(t.TempDir(), name+".log")}
	p.start()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			b, _ := os.ReadFile(p.log)
			lines := strings.Split(string(b), "\n")
			if len(lines) > 40 {
				lines = lines[len(lines)-40:]
			}
			t.Logf("%s log tail:\n%s", name, strings.Join(lines, "\n"))
		}
	})
	return p
}

func (p *proc) start() {
	p.t.Helper()
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		p.t.Fatal(err)
	}
	defer f.Close()
	p.cmd = exec.Command(binary(p.t), p.args...)
	p.cmd.Stdout, p.cmd.Stderr = f, f
	if err := p.cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	p.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { _ = cmd.Wait(); close(done) }(p.cmd, p.done)
}

// kill sends SIGKILL and waits for the process to exit.
func (p *proc) kill() {
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Kill()
	<-p.done
	p.cmd = nil
}

// txWriter commits transactions, each inserting per rows into a and one
// into b, until stopped; it counts the committed ones.
type txWriter struct {
	dsn  string
	per  int
	mu   sync.Mutex
	next int // number of the next transaction, from 1
	stop chan struct{}
	done chan error
}

func (w *txWriter) start() {
	w.stop, w.done = make(chan struct{}), make(chan error, 1)
	go func() { w.done <- w.run() }()
}

func (w *txWriter) run() error {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, w.dsn)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	for {
		select {
		case <-w.stop:
			return nil
		default:
		}
		w.mu.Lock()
		i := w.next
		w.mu.Unlock()
		tx, err := conn.Begin(ctx)
		if err != nil {
			return err
		}
		base := (i-1)*w.per + 1
		if _, err := tx.Exec(ctx, "INSERT INTO a (id, name) SELECT g, 'row ' || g FROM generate_series($1::int, $2::int) g", base, base+w.per-1); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "INSERT INTO b (id, v) VALUES ($1, $2)", i, float64(i)); err != nil {
			return err
		}
		if err := tx.Commit(ctx); err != nil {
			return err
		}
		w.mu.Lock()
		w.next++
		w.mu.Unlock()
		time.Sleep(2 * time.Millisecond) // a steady trickle, not a flood
	}
}

// pause stops the writer and returns how many transactions it committed.
func (w *txWriter) pause(t *testing.T) int {
	t.Helper()
	close(w.stop)
	if err := <-w.done; err != nil {
		t.Fatalf("writer: %v", err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.next - 1
}

func (w *txWriter) committed() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.next - 1
}

// cdcCaptured reads the connector's events and returns the number of
// writer transactions captured (rows of b, by the snapshot or the
// stream); with check set it verifies them: every insert
// once, in commit order, every transaction in one append with its marker.
func cdcCaptured(t *testing.T, cl *client.Client, per int, check bool) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	txs := 0
	seen := map[string]bool{}
	lastID := map[string]int64{}
	var open []client.RecordedEvent          // events since the last marker
	schemas := map[string]*pgsource.Schema{} // the latest SchemaChanged per table
	for ev, err := range cl.Replay(ctx, 0, client.StreamPrefix("cdc/postgres")) {
		if err != nil {
			t.Fatal(err)
		}
		if ev.Stream == "cdc/postgres" {
			m, err := pgsource.DecodeMarker(ev.Payload)
			if err != nil {
				t.Fatal(err)
			}
			if check {
				rows := 0
				for _, o := range open {
					if o.RaftIndex != ev.RaftIndex {
						t.Fatalf("event at %d in raft entry %d, its marker at %d in %d: transaction split", o.Offset, o.RaftIndex, ev.Offset, ev.RaftIndex)
					}
					if o.Type != pgsource.TypeSchema {
						rows++
					}
				}
				if rows != m.Changes && ev.Type == pgsource.TypeTransaction {
					t.Fatalf("marker at %d counts %d changes, its append holds %d", ev.Offset, m.Changes, rows)
				}
			}
			open = open[:0]
			continue
		}
		open = append(open, ev)
		if ev.Stream == "cdc/postgres/public.b" && ev.Type != pgsource.TypeSchema {
			txs++
		}
		if !check {
			continue
		}
		if ev.Type == pgsource.TypeSchema {
			sc, err := pgsource.DecodeSchema(ev.Payload)
			if err != nil {
				t.Fatal(err)
			}
			schemas[sc.Table] = sc
			continue
		}
		ch, err := pgsource.DecodeChange(ev.Payload)
		if err != nil {
			t.Fatal(err)
		}
		// Every row carries exactly the columns of its table's latest
		// SchemaChanged: a schema change is never silent.
		sc := schemas[ch.Table]
		if sc == nil || len(ch.New) != len(sc.Columns) || len(ch.Columns) != len(sc.Columns) {
			t.Fatalf("row at %d has %d values and %d columns; the table's last SchemaChanged %+v", ev.Offset, len(ch.New), len(ch.Columns), sc)
		}
		for _, c := range sc.Columns {
			if _, ok := ch.New[c.Name]; !ok {
				t.Fatalf("row at %d lacks column %s", ev.Offset, c.Name)
			}
		}
		id := ch.New["id"].(int64)
		key := fmt.Sprintf("%s/%d", ch.Table, id)
		if seen[key] {
			t.Fatalf("%s captured twice (offset %d)", key, ev.Offset)
		}
		seen[key] = true
		if id <= lastID[ch.Table] {
			t.Fatalf("%s after %d: out of commit order", key, lastID[ch.Table])
		}
		lastID[ch.Table] = id
	}
	if check && len(open) > 0 {
		t.Fatalf("%d events after the last marker", len(open))
	}
	if check && (schemas["public.b"] == nil || len(schemas["public.b"].Columns) != 3 || schemas["public.b"].Columns[2].Name != "note") {
		t.Fatalf("public.b's last SchemaChanged: %+v, want the added column note", schemas["public.b"])
	}
	if check {
		for i := 1; i <= txs; i++ {
			for j := (i-1)*per + 1; j <= i*per; j++ {
				if !seen[fmt.Sprintf("public.a/%d", j)] {
					t.Fatalf("public.a/%d missing", j)
				}
			}
			if !seen[fmt.Sprintf("public.b/%d", i)] {
				t.Fatalf("public.b/%d missing", i)
			}
		}
		if len(seen) != txs*(per+1) {
			t.Fatalf("%d rows for %d transactions", len(seen), txs)
		}
	}
	return txs
}

func waitCaptured(t *testing.T, cl *client.Client, per, want int) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for cdcCaptured(t, cl, per, false) < want {
		if time.Now().After(deadline) {
			t.Fatalf("the connector did not capture %d transactions", want)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestCDCPostgresFaults: `tsstore cdc postgres` captures a table pair
// while transactions commit steadily; the connector is SIGKILLed and
// restarted, the tsstore leader is SIGKILLed and restarted, and
// PostgreSQL is restarted (once stopped, once crashed), with a column
// added in between. Every committed row change is in tsstore exactly once,
// in commit order, no transaction is split across appends, the snapshot
// and the stream meet without gap or duplicate, and every row carries the
// columns of its table's latest SchemaChanged. Then a table with a column
// type the connector cannot encode makes the binary exit 78 naming it.
func TestCDCPostgresFaults(t *testing.T) {
	c := startCluster(t)
	pg := pgtest.Start(t)
	pg.Exec(t, "postgres",
		"CREATE TABLE a (id int PRIMARY KEY, name text)", "CREATE TABLE b (id bigint PRIMARY KEY, v float8)",
		"CREATE PUBLICATION pub FOR TABLE a, b")
	const per = 4
	w := &txWriter{dsn: pg.DSN("postgres"), per: per, next: 1}
	w.start()
	waitFor := func(n int) {
		t.Helper()
		deadline := time.Now().Add(time.Minute)
		for w.committed() < n {
			if time.Now().After(deadline) {
				t.Fatalf("writer stuck below %d transactions", n)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitFor(50) // rows for the initial snapshot
	conn := startProc(t, "cdc", "cdc", "postgres", "--addr", strings.Join(c.APIAddrs(), ","), "--pg", pg.DSN("postgres"),
		"--slot", "systest", "--publication", "pub", "--status-interval", "200ms", "--log-format", "text")
	cl := newClient(t, c.APIAddrs())

	// 1. SIGKILL of the connector while it streams.
	waitCaptured(t, cl, per, 1)
	waitFor(w.committed() + 100)
	conn.kill()
	waitFor(w.committed() + 50)
	conn.start()

	// 2. SIGKILL of the tsstore leader.
	waitCaptured(t, cl, per, cdcCaptured(t, cl, per, false)+50)
	leader := waitLeader(t, c)
	if err := leader.Kill(); err != nil {
		t.Fatal(err)
	}
	waitFor(w.committed() + 100)
	waitLeader(t, c)
	if err := leader.Start(); err != nil {
		t.Fatal(err)
	}

	// 3. PostgreSQL stopped and started, then crashed and started.
	waitCaptured(t, cl, per, cdcCaptured(t, cl, per, false)+50)
	w.pause(t)
	pg.Stop()
	if err := pg.Restart(); err != nil {
		t.Fatal(err)
	}
	w.start()
	waitFor(w.committed() + 100)
	w.pause(t)
	pg.Exec(t, "postgres", "ALTER TABLE b ADD COLUMN note text DEFAULT 'added'") // a SchemaChanged before the next row of b
	pg.Crash()
	if err := pg.Restart(); err != nil {
		t.Fatal(err)
	}
	w.start()
	waitFor(w.committed() + 100)
	total := w.pause(t)

	waitCaptured(t, cl, per, total)
	if got := cdcCaptured(t, cl, per, true); got != total {
		t.Fatalf("%d transactions captured, %d committed", got, total)
	}
	t.Logf("%d transactions (%d row changes) captured exactly once through a connector kill, a leader kill and two PostgreSQL restarts", total, total*(per+1))

	// A column type without an encoding: the binary exits 78 naming it.
	pg.Exec(t, "postgres", "CREATE TABLE places (id int PRIMARY KEY, at point)", "CREATE PUBLICATION geo FOR TABLE places")
	out, err := exec.Command(binary(t), "cdc", "postgres", "--addr", strings.Join(c.APIAddrs(), ","), "--pg", pg.DSN("postgres"),
		"--slot", "geo", "--publication", "geo", "--stream-prefix", "geo/").CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 78 || !strings.Contains(string(out), "table public.places column at has type point") {
		t.Fatalf("cdc postgres on a point column: %v, want exit 78\n%s", err, out)
	}
}
