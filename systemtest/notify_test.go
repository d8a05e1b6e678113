package systemtest

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// notifySocket listens where systemd would, and yields each datagram.
type notifySocket struct {
	t    *testing.T
	conn *net.UnixConn
	path string
}

func listenNotify(t *testing.T) *notifySocket {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &notifySocket{t: t, conn: conn, path: path}
}

// next returns the next datagram's lines.
func (s *notifySocket) next() []string {
	s.t.Helper()
	buf := make([]byte, 4096)
	s.conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	n, _, err := s.conn.ReadFromUnix(buf)
	if err != nil {
		s.t.Fatalf("waiting for sd_notify: %v", err)
	}
	return strings.Split(strings.TrimSpace(string(buf[:n])), "\n")
}

// until reads datagrams until one holds line, and returns that datagram.
func (s *notifySocket) until(line string) []string {
	s.t.Helper()
	for {
		msg := s.next()
		for _, l := range msg {
			if l == line {
				return msg
			}
		}
		s.t.Logf("sd_notify: %q", msg)
	}
}

// `tsstore serve` under a Type=notify unit: READY=1 once it serves,
// WATCHDOG=1 at half of WATCHDOG_USEC, STOPPING=1 on SIGTERM, then a clean
// exit.
func TestServeNotifiesSystemd(t *testing.T) {
	sock := listenNotify(t)
	n := startNode(t, "NOTIFY_SOCKET="+sock.path, "WATCHDOG_USEC=400000")

	// While it opens, each step is a STATUS= line that also pushes back a
	// start timeout.
	first := sock.next()
	if !strings.HasPrefix(first[0], "STATUS=opening: ") || len(first) != 2 || first[1] != "EXTEND_TIMEOUT_USEC=30000000" {
		t.Errorf("first datagram %q, want STATUS=opening: ... and EXTEND_TIMEOUT_USEC", first)
	}
	sock.until("STATUS=opening: reading the raft log")
	sock.until("STATUS=opening: starting raft")
	ready := sock.until("READY=1")
	conn, err := grpc.NewClient(n.APIAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	hc, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || hc.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("READY=1 sent while health is %v, %v", hc, err)
	}
	if !strings.Contains(strings.Join(ready, "\n"), "STATUS=serving: leader n1 (this node)") {
		t.Errorf("READY=1 without a serving STATUS line: %q", ready)
	}

	for range 3 {
		sock.until("WATCHDOG=1")
	}

	if err := n.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	stopping := sock.until("STOPPING=1")
	if !strings.Contains(strings.Join(stopping, "\n"), "STATUS=shutting down on terminated") {
		t.Errorf("STOPPING=1 without the reason: %q", stopping)
	}
	if err := n.Stop(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(n.Logs(), `"msg":"node stopped"`) {
		t.Fatal("no clean shutdown after SIGTERM")
	}
}
