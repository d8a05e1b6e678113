package jepsen

import (
	"io"
	"net"
	"testing"
	"time"
)

// echoServer answers every connection by echoing it.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	return ln.Addr().String()
}

// roundTrip sends a message through the link and waits up to d for it to
// come back.
func roundTrip(t *testing.T, l *Link, d time.Duration) error {
	t.Helper()
	c, err := net.Dial("tcp", l.Addr())
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(d))
	if _, err := c.Write([]byte("ping")); err != nil {
		return err
	}
	buf := make([]byte, 4)
	_, err = io.ReadFull(c, buf)
	return err
}

// TestLinkModes: an up link forwards, a cut link refuses, a stalled link
// holds traffic until it is healed, and healing restores forwarding.
func TestLinkModes(t *testing.T) {
	l, err := newLink("a", "b", echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := roundTrip(t, l, 5*time.Second); err != nil {
		t.Fatalf("up link: %v", err)
	}
	l.Set(Cut, 0)
	if err := roundTrip(t, l, 5*time.Second); err == nil {
		t.Fatal("cut link forwarded traffic")
	}
	l.Set(Stall, 0)
	if err := roundTrip(t, l, 300*time.Millisecond); err == nil {
		t.Fatal("stalled link forwarded traffic")
	}
	// A stalled connection delivers once the link heals.
	c, err := net.Dial("tcp", l.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("held")); err != nil {
		t.Fatal(err)
	}
	l.Set(Up, 0)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "held" {
		t.Fatalf("held bytes after healing: %q, %v", buf, err)
	}
}

// TestNetworkShapes checks which links each partition shape cuts.
func TestNetworkShapes(t *testing.T) {
	addr := echoServer(t)
	n, err := newNetwork(map[string]string{"n1": addr, "n2": addr, "n3": addr})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	down := func() map[[2]string]bool {
		m := map[[2]string]bool{}
		for k, l := range n.links {
			if mode, _ := l.Mode(); mode != Up {
				m[k] = true
			}
		}
		return m
	}
	n.Isolate("n1", Cut)
	if d := down(); len(d) != 4 || !d[[2]string{"n1", "n2"}] || !d[[2]string{"n3", "n1"}] || d[[2]string{"n2", "n3"}] {
		t.Fatalf("isolate n1 cut %v", d)
	}
	n.Heal()
	n.Bridge("n1", "n3", Stall)
	if d := down(); len(d) != 2 || !d[[2]string{"n1", "n3"}] || !d[[2]string{"n3", "n1"}] {
		t.Fatalf("bridge cut %v", d)
	}
	n.Heal()
	n.OneWay("n2", "n3", Cut)
	if d := down(); len(d) != 1 || !d[[2]string{"n2", "n3"}] {
		t.Fatalf("one-way cut %v", d)
	}
	if got := n.DialOverride("n1"); got != "n2="+n.links[[2]string{"n1", "n2"}].Addr()+",n3="+n.links[[2]string{"n1", "n3"}].Addr() {
		t.Fatalf("dial override %q", got)
	}
}
