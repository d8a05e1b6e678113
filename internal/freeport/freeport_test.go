package freeport

import (
	"net"
	"strconv"
	"testing"
)

// Ports are distinct, bindable, never issued twice by a process, and
// outside the ephemeral range that outgoing connections take ports from.
func TestPortsOutsideEphemeralRange(t *testing.T) {
	lo, hi, err := ephemeralRange()
	if err != nil {
		t.Fatalf("this test runs on Linux: %v", err)
	}
	seen := map[int]bool{}
	for range 5 {
		ps, err := Ports("127.0.0.1", 8)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range ps {
			if seen[p] {
				t.Fatalf("port %d issued twice", p)
			}
			seen[p] = true
			if p >= lo && p <= hi {
				t.Fatalf("port %d is in the ephemeral range [%d, %d]", p, lo, hi)
			}
			l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
			if err != nil {
				t.Fatalf("port %d not bindable after Ports: %v", p, err)
			}
			l.Close()
		}
	}
	// An outgoing connection's local port is in the ephemeral range.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if p := c.LocalAddr().(*net.TCPAddr).Port; p < lo || p > hi {
		t.Fatalf("outgoing port %d outside [%d, %d]: the premise does not hold here", p, lo, hi)
	}
}
