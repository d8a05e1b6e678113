package pgtest

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
)

// TestStartRestart starts a server, writes a row, restarts the server
// (once stopped, once crashed) and reads the row back, and checks that
// logical replication is enabled.
func TestStartRestart(t *testing.T) {
	s := Start(t)
	s.Exec(t, "postgres", "CREATE TABLE t (id int PRIMARY KEY)", "INSERT INTO t VALUES (1)")
	s.Stop()
	if err := s.Restart(); err != nil {
		t.Fatal(err)
	}
	s.Crash()
	if err := s.Restart(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, s.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int
	var level string
	if err := conn.QueryRow(ctx, "SELECT count(*), current_setting('wal_level') FROM t").Scan(&n, &level); err != nil {
		t.Fatal(err)
	}
	if n != 1 || level != "logical" {
		t.Fatalf("rows %d, wal_level %q; want 1, logical", n, level)
	}
}
