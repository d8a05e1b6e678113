package freeport

import (
	"net"
	"os"
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

// Processes picking ports at once pick from separate shares of the range:
// each claims a slot no live process holds (a lock per open file, so two
// claims in this test stand for two processes), and takes none once all
// are held.
func TestSlotsSeparateProcesses(t *testing.T) {
	dir := t.TempDir()
	files := map[int]*os.File{}
	for range slots {
		i, f := claimSlot(dir)
		if i < 0 || files[i] != nil {
			t.Fatalf("claim got slot %d with %d held", i, len(files))
		}
		files[i] = f
	}
	t.Cleanup(func() {
		for _, f := range files {
			f.Close()
		}
	})
	if i, _ := claimSlot(dir); i != -1 {
		t.Fatalf("a claim with every slot held got slot %d", i)
	}
	// A slot whose holder exited (its file closed) is free again.
	files[3].Close()
	if i, f := claimSlot(dir); i != 3 {
		t.Fatalf("a claim after slot 3's holder went got slot %d", i)
	} else {
		files[3] = f
	}

	// This process's ports lie in its share.
	lo, hi := processRange()
	clo, chi := candidates()
	ps, err := Ports("127.0.0.1", 16)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ps {
		if p < lo || p >= hi {
			t.Fatalf("port %d outside this process's share [%d, %d) of [%d, %d) (slot %d)", p, lo, hi, clo, chi, slot)
		}
	}
	t.Logf("slot %d: ports from [%d, %d) of [%d, %d)", slot, lo, hi, clo, chi)
}
