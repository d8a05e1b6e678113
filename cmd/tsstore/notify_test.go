package main

import (
	"bytes"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tsstore/tsstore/server"
)

// listenNotify listens where systemd would and returns the socket.
func listenNotify(t *testing.T, name string) *net.UnixConn {
	t.Helper()
	l, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	t.Setenv("NOTIFY_SOCKET", name)
	return l
}

// nextNotify returns the next datagram on l.
func nextNotify(t *testing.T, l *net.UnixConn) string {
	t.Helper()
	buf := make([]byte, 4096)
	l.SetReadDeadline(time.Now().Add(20 * time.Second))
	n, _, err := l.ReadFromUnix(buf)
	if err != nil {
		t.Fatalf("waiting for sd_notify: %v", err)
	}
	return string(buf[:n])
}

// The sd_notify sender (go-systemd's daemon.SdNotify) reaches both a
// socket file and an abstract socket ('@' prefix), and
// WATCHDOG_USEC/WATCHDOG_PID are honoured. The whole protocol against the
// real binary is systemtest/notify_test.go.
func TestSDNotifySender(t *testing.T) {
	abstract := fmt.Sprintf("@tsstore-notify-test-%d", os.Getpid())
	for _, name := range []string{filepath.Join(t.TempDir(), "notify.sock"), abstract} {
		l := listenNotify(t, name)
		sd := openNotify(slog.New(slog.DiscardHandler))
		if sd == nil {
			t.Fatalf("%s: notification off with NOTIFY_SOCKET set", name)
		}
		if err := sd.send("READY=1\nSTATUS=hello\n"); err != nil {
			t.Fatal(err)
		}
		if got := nextNotify(t, l); got != "READY=1\nSTATUS=hello\n" {
			t.Fatalf("%s: got %q", name, got)
		}
	}

	t.Setenv("NOTIFY_SOCKET", "")
	if sd := openNotify(slog.New(slog.DiscardHandler)); sd != nil {
		t.Fatal("notification on without NOTIFY_SOCKET")
	}

	for _, c := range []struct {
		usec, pid string
		want      time.Duration
		bad       bool
	}{
		{"", "", 0, false},
		{"30000000", "", 15 * time.Second, false},
		{"30000000", strconv.Itoa(os.Getpid()), 15 * time.Second, false},
		{"30000000", "1", 0, false}, // meant for another process
		{"soon", "", 0, true},
		{"0", "", 0, true},
	} {
		t.Setenv("WATCHDOG_USEC", c.usec)
		t.Setenv("WATCHDOG_PID", c.pid)
		got, err := watchdogInterval()
		if got != c.want || (err != nil) != c.bad {
			t.Errorf("WATCHDOG_USEC=%q WATCHDOG_PID=%q: %v, %v", c.usec, c.pid, got, err)
		}
	}
	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "x.sock"))
	t.Setenv("WATCHDOG_USEC", "soon")
	var logs bytes.Buffer
	if sd := openNotify(slog.New(slog.NewTextHandler(&logs, nil))); sd != nil || !strings.Contains(logs.String(), "systemd notification disabled") {
		t.Fatalf("bad WATCHDOG_USEC: notifier %v, log %q", sd, logs.String())
	}
}

// A node that cannot reach a quorum still reports READY=1 after the grace
// period, saying it is not serving, and extends the start timeout until
// then: `systemctl restart` never waits for the other nodes for ever.
func TestNotifyReadyWithoutQuorum(t *testing.T) {
	l := listenNotify(t, filepath.Join(t.TempDir(), "notify.sock"))
	t.Setenv("WATCHDOG_USEC", "")
	cfg := server.DefaultConfig()
	cfg.NodeID, cfg.DataDir, cfg.RaftAddr, cfg.APIAddr = "n1", t.TempDir(), freeAddr(t), freeAddr(t)
	// n2 never starts: n1 can never elect a leader.
	cfg.Bootstrap = []server.Peer{{ID: "n1", RaftAddr: cfg.RaftAddr}, {ID: "n2", RaftAddr: freeAddr(t)}}
	cfg.Logger = slog.New(slog.DiscardHandler)
	n, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	sd := startNotify(openNotify(cfg.Logger), n, cfg.Logger, time.Second)
	first := nextNotify(t, l)
	if strings.Contains(first, "READY=1") || !strings.Contains(first, "STATUS=not serving") ||
		!strings.Contains(first, "EXTEND_TIMEOUT_USEC=30000000") {
		t.Fatalf("first datagram %q, want not serving, the start timeout extended, not ready", first)
	}
	for {
		msg := nextNotify(t, l)
		if strings.Contains(msg, "READY=1") {
			if strings.Contains(msg, "EXTEND_TIMEOUT_USEC") {
				t.Fatalf("READY=1 still extends the start timeout: %q", msg)
			}
			break
		}
	}
	if serving, _ := n.Health(); serving {
		t.Fatal("the node serves without a quorum; the test proves nothing")
	}
	sd.stopping("test over")
	if msg := nextNotify(t, l); msg != "STOPPING=1\nSTATUS=test over\n" {
		t.Fatalf("stopping: %q", msg)
	}
}
