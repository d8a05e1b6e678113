// Package pgtest starts a real PostgreSQL server for tests: initdb into a
// fresh temporary directory, wal_level=logical (so logical replication
// slots work), listening on 127.0.0.1 on a free port with its unix socket
// in the same directory. PostgreSQL refuses to run as root, so when the
// test runs as root (as CI does) initdb and postgres run as the
// unprivileged user nobody and the directory is handed to it.
//
// A machine without the server binaries fails the test with the name of
// the package to install (postgresql-15); it never skips.
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tsstore/tsstore/internal/freeport"
)

// binDirs are searched for initdb and postgres, then PATH.
var binDirs = []string{"/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/17/bin"}

// Server is one running PostgreSQL server. The superuser is "postgres",
// with trust authentication on loopback.
type Server struct {
	Dir  string // data directory parent: data/, socket, log
	Port int

	bin  string // directory of initdb and postgres
	cred *syscall.Credential

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// Start initializes and starts a server; it is stopped and its directory
// removed when the test ends (the log's tail is printed if it failed).
func Start(t testing.TB) *Server {
	t.Helper()
	bin, err := findBin()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "tsstore-pgtest-")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Dir: dir, bin: bin}
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			t.Logf("postgres log tail:\n%s", s.LogTail(40))
		}
		os.RemoveAll(dir)
	})
	if os.Geteuid() == 0 {
		u, err := user.Lookup("nobody")
		if err != nil {
			t.Fatalf("running as root: postgres needs an unprivileged user and %v (create one, e.g. useradd nobody)", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		s.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	if s.Port, err = freePort(); err != nil {
		t.Fatal(err)
	}
	initdb := s.command(filepath.Join(bin, "initdb"), "-D", s.dataDir(), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync", "--locale=C")
	if out, err := initdb.CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	if err := s.Restart(); err != nil {
		t.Fatal(err)
	}
	return s
}

// findBin returns the directory holding initdb and postgres.
func findBin() (string, error) {
	for _, d := range binDirs {
		if _, err := os.Stat(filepath.Join(d, "postgres")); err == nil {
			if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
				return d, nil
			}
		}
	}
	p, err := exec.LookPath("postgres")
	if err == nil {
		if _, err := os.Stat(filepath.Join(filepath.Dir(p), "initdb")); err == nil {
			return filepath.Dir(p), nil
		}
	}
	return "", errors.New("pgtest: PostgreSQL server binaries (initdb, postgres) not found in " +
		strings.Join(binDirs, ", ") + " or PATH: install Debian's postgresql-15 package (apt-get install postgresql-15)")
}

func (s *Server) dataDir() string { return filepath.Join(s.Dir, "data") }
func (s *Server) logPath() string { return filepath.Join(s.Dir, "postgres.log") }

func (s *Server) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.Dir = s.Dir
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	// Its own process group: a Ctrl-C of the test does not reach it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: s.cred}
	return cmd
}

// Restart starts the server (again) on the same port and data directory
// and waits until it accepts connections. The server must be stopped.
func (s *Server) Restart() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return errors.New("pgtest: server is running")
	}
	logf, err := os.OpenFile(s.logPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o666)
	if err != nil {
		return err
	}
	defer logf.Close()
	if s.cred != nil {
		_ = os.Chown(s.logPath(), int(s.cred.Uid), int(s.cred.Gid))
	}
	// fsync=off is safe for process crashes (Crash), the only kind tests
	// make: the kernel keeps what was written. synchronous_commit stays on,
	// or a crash would lose commits the client saw succeed.
	cmd := s.command(filepath.Join(s.bin, "postgres"), "-D", s.dataDir(),
		"-p", strconv.Itoa(s.Port), "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="+s.Dir,
		"-c", "wal_level=logical", "-c", "max_replication_slots=16", "-c", "max_wal_senders=16",
		"-c", "fsync=off", "-c", "full_page_writes=off",
		"-c", "max_connections=100", "-c", "wal_sender_timeout=60s")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("pgtest: starting postgres: %w", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	s.cmd, s.done = cmd, done
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for {
		conn, err := pgx.Connect(ctx, s.DSN("postgres"))
		if err == nil {
			conn.Close(ctx)
			return nil
		}
		select {
		case <-done:
			return fmt.Errorf("pgtest: postgres exited at start: %s", s.LogTail(20))
		case <-ctx.Done():
			return fmt.Errorf("pgtest: postgres not accepting connections: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Stop shuts the server down (fast mode: open sessions are ended, the
// data is checkpointed) and waits for it. It is a no-op if it is stopped.
func (s *Server) Stop() { s.signal(syscall.SIGINT) }

// Crash stops the server in immediate mode (SIGQUIT: every process exits
// at once, without a checkpoint), so the next start runs crash recovery.
// It is a crash as far as the data is concerned; unlike SIGKILL of the
// postmaster it waits for the backends, whose shared memory would
// otherwise block the next start.
func (s *Server) Crash() { s.signal(syscall.SIGQUIT) }

func (s *Server) signal(sig syscall.Signal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(sig)
	select {
	case <-s.done:
	case <-time.After(60 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
	s.cmd, s.done = nil, nil
}

// DSN is a connection string for database db as the superuser.
func (s *Server) DSN(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", s.Port, db)
}

// Exec runs SQL statements in database db, failing the test on error.
func (s *Server) Exec(t testing.TB, db string, sql ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.DSN(db))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, q := range sql {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}

// LogTail returns the last n lines of the server's log.
func (s *Server) LogTail(n int) string {
	b, err := os.ReadFile(s.logPath())
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func freePort() (int, error) {
	ps, err := freeport.Ports("127.0.0.1", 1)
	if err != nil {
		return 0, err
	}
	return ps[0], nil
}
