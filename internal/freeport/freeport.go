// Package freeport picks loopback TCP ports for test and harness
// processes that stop and start again on the same address (a killed
// node restarted on its data).
//
// The usual way, listening on port 0 and closing the listener, hands out
// a port from the kernel's ephemeral range, the same range the kernel
// takes the local port of every outgoing connection from. While such a
// node is down, any connection made on the machine (another test's
// client, a Raft peer dialing) can take its port, and the restart then
// fails to bind: a flaky test. Ports picked here lie outside that range,
// so only another process that picks ports the same way could take one.
//
// Processes that pick ports here at the same time (go test runs packages
// side by side) would still meet now and then: one's node is down for a
// restart, or between the pick and its bind, and the other picks the same
// port. So each process first claims one of a few slots, a file lock in
// the temporary directory that the kernel drops when the process exits,
// and picks from that slot's share of the range alone. If every slot is
// claimed, or its share runs out, it picks from the whole range.
package freeport

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
)

// lowest is the first port considered below the ephemeral range: clear of
// the well-known and most registered service ports.
const lowest = 10000

var (
	mu     sync.Mutex
	issued = map[int]bool{} // ports this process handed out already
)

// Ports returns n distinct TCP ports free on host, outside the kernel's
// ephemeral port range, none returned before by this process. Each was
// bound and released, so it is free now; nothing reserves it after.
func Ports(host string, n int) ([]int, error) {
	mu.Lock()
	defer mu.Unlock()
	lo, hi := processRange()
	if out, err := pick(host, n, lo, hi); err == nil {
		return out, nil
	}
	lo, hi = candidates() // the share ran out: anywhere outside the ephemeral range
	return pick(host, n, lo, hi)
}

// pick binds and releases n random ports in [lo, hi) not issued before.
// The caller holds mu.
func pick(host string, n, lo, hi int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	out := make([]int, 0, n)
	for tries := 0; len(out) < n; tries++ {
		if tries > 1000*n {
			return nil, fmt.Errorf("freeport: no free port in [%d, %d) on %s", lo, hi, host)
		}
		p := lo + rand.IntN(hi-lo)
		if issued[p] {
			continue
		}
		l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(p)))
		if err != nil {
			continue // in use, or not bindable here
		}
		ls = append(ls, l)
		issued[p] = true
		out = append(out, p)
	}
	return out, nil
}

// Addrs is Ports as host:port strings.
func Addrs(host string, n int) ([]string, error) {
	ps, err := Ports(host, n)
	if err != nil {
		return nil, err
	}
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = net.JoinHostPort(host, strconv.Itoa(p))
	}
	return out, nil
}

// candidates is the range ports are picked from: below the ephemeral
// range if there is room, else above it.
func candidates() (lo, hi int) {
	elo, ehi, err := ephemeralRange()
	if err != nil {
		elo, ehi = 32768, 60999 // Linux's default
	}
	if elo-lowest >= 2000 {
		return lowest, elo
	}
	if 65535-ehi >= 2000 {
		return ehi + 1, 65536
	}
	return lowest, 65536 // no room outside: anywhere, checked by binding
}

// ephemeralRange reads the kernel's ephemeral port range (Linux).
func ephemeralRange() (lo, hi int, err error) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0, 0, err
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0, 0, errors.New("freeport: unexpected ip_local_port_range")
	}
	if lo, err = strconv.Atoi(f[0]); err == nil {
		hi, err = strconv.Atoi(f[1])
	}
	return lo, hi, err
}
