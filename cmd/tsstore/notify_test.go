package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// The sd_notify sender reaches both a socket file and an abstract socket
// ('@' prefix), and WATCHDOG_USEC/WATCHDOG_PID are honoured. The whole
// protocol against the real binary is systemtest/notify_test.go.
func TestSDNotifySender(t *testing.T) {
	abstract := fmt.Sprintf("@tsstore-notify-test-%d", os.Getpid())
	for _, name := range []string{filepath.Join(t.TempDir(), "notify.sock"), abstract} {
		l, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
		if err != nil {
			t.Fatal(err)
		}
		t.Setenv("NOTIFY_SOCKET", name)
		sd, err := openSDNotify()
		if err != nil {
			t.Fatal(err)
		}
		if err := sd.send("READY=1\nSTATUS=hello\n"); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 256)
		l.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, _, err := l.ReadFromUnix(buf)
		if err != nil || string(buf[:n]) != "READY=1\nSTATUS=hello\n" {
			t.Fatalf("%s: got %q, %v", name, buf[:n], err)
		}
		sd.conn.Close()
		l.Close()
	}

	t.Setenv("NOTIFY_SOCKET", "")
	if sd, err := openSDNotify(); sd != nil || err != nil {
		t.Fatalf("without NOTIFY_SOCKET: %v %v", sd, err)
	}
	t.Setenv("NOTIFY_SOCKET", "relative.sock")
	if _, err := openSDNotify(); err == nil {
		t.Fatal("relative NOTIFY_SOCKET accepted")
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
}
