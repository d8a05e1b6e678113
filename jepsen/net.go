package jepsen

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// Network is the set of link proxies between the nodes: one per ordered
// pair, so every fault can be one-way. Nodes reach their peers only
// through it (tsstore serve --raft-dial-override). Client traffic and the
// nodes' API-to-API calls (append forwarding, ReadIndex) do not pass
// through it: partitions cut Raft traffic.
type Network struct {
	ids   []string
	links map[[2]string]*Link
}

// newNetwork starts a proxy for every ordered pair of nodes; raft maps a
// node id to its Raft listen address.
func newNetwork(raft map[string]string) (*Network, error) {
	n := &Network{links: map[[2]string]*Link{}}
	for id := range raft {
		n.ids = append(n.ids, id)
	}
	sort.Strings(n.ids)
	for _, from := range n.ids {
		for _, to := range n.ids {
			if from == to {
				continue
			}
			l, err := newLink(from, to, raft[to])
			if err != nil {
				n.Close()
				return nil, err
			}
			n.links[[2]string{from, to}] = l
		}
	}
	return n, nil
}

// DialOverride is the --raft-dial-override value for node from.
func (n *Network) DialOverride(from string) string {
	var parts []string
	for _, to := range n.ids {
		if l := n.links[[2]string{from, to}]; l != nil {
			parts = append(parts, to+"="+l.Addr())
		}
	}
	return strings.Join(parts, ",")
}

// Open counts the connections the proxy from -> to carries now.
func (n *Network) Open(from, to string) int {
	l := n.links[[2]string{from, to}]
	if l == nil {
		return 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.mu.conns)
}

// Close stops every proxy.
func (n *Network) Close() {
	for _, l := range n.links {
		l.Close()
	}
}

// Heal restores every link.
func (n *Network) Heal() {
	for _, l := range n.links {
		l.Set(Up, 0)
	}
}

// set applies mode to the link from -> to.
func (n *Network) set(from, to string, mode LinkMode, delay time.Duration) {
	if l := n.links[[2]string{from, to}]; l != nil {
		l.Set(mode, delay)
	}
}

// Partition cuts both directions between every node of a and every node
// of b (a node in neither keeps all its links).
func (n *Network) Partition(a, b []string, mode LinkMode) {
	for _, x := range a {
		for _, y := range b {
			n.set(x, y, mode, 0)
			n.set(y, x, mode, 0)
		}
	}
}

// Isolate cuts id off from every other node.
func (n *Network) Isolate(id string, mode LinkMode) {
	n.Partition([]string{id}, n.others(id), mode)
}

// Bridge cuts a from c while both keep talking to the bridge node b.
func (n *Network) Bridge(a, c string, mode LinkMode) {
	n.Partition([]string{a}, []string{c}, mode)
}

// OneWay cuts only the link from -> to: requests that from sends to to
// (and their responses) are lost, while to's requests to from still pass.
func (n *Network) OneWay(from, to string, mode LinkMode) {
	n.set(from, to, mode, 0)
}

// Slow delays every link by d per chunk.
func (n *Network) Slow(d time.Duration) {
	for _, l := range n.links {
		l.Set(Up, d)
	}
}

func (n *Network) others(id string) []string {
	var out []string
	for _, x := range n.ids {
		if x != id {
			out = append(out, x)
		}
	}
	return out
}

// String describes the links that are not plainly up.
func (n *Network) String() string {
	var parts []string
	for k, l := range n.links {
		if m, d := l.Mode(); m != Up || d > 0 {
			parts = append(parts, fmt.Sprintf("%s->%s:%v/%v", k[0], k[1], m, d))
		}
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}
