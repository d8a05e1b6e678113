package jepsen

import (
	"errors"
	"io"
	"net"
	"sync"
	"time"
)

// LinkMode is what a link proxy does with traffic.
type LinkMode int

// Link modes.
const (
	// Up forwards traffic (after the link's delay, if any).
	Up LinkMode = iota
	// Cut closes every connection and refuses new ones: the sender sees
	// connection errors at once.
	Cut
	// Stall accepts and holds traffic without forwarding it, like a
	// network that silently drops packets: the sender sees timeouts.
	Stall
)

func (m LinkMode) String() string {
	return [...]string{"up", "cut", "stall"}[m]
}

// Link is a TCP proxy for one direction of one Raft link: node From dials
// it to reach node To. From's requests and To's responses both pass
// through it, so cutting it stops From from talking to To, while To can
// still reach From through the opposite link.
type Link struct {
	From, To string
	target   string // To's raft address
	ln       net.Listener

	mu struct {
		sync.Mutex
		mode    LinkMode
		delay   time.Duration
		changed chan struct{} // closed and replaced on every change
		conns   map[net.Conn]struct{}
		closed  bool
	}
	wg sync.WaitGroup
}

// newLink listens on a free loopback port and forwards to target.
func newLink(from, to, target string) (*Link, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	l := &Link{From: from, To: to, target: target, ln: ln}
	l.mu.changed = make(chan struct{})
	l.mu.conns = map[net.Conn]struct{}{}
	l.goFunc(l.accept)
	return l, nil
}

// Addr is the address From must dial instead of To's.
func (l *Link) Addr() string { return l.ln.Addr().String() }

func (l *Link) goFunc(f func()) {
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		f()
	}()
}

// Set changes the link's mode and delay. Cutting closes every open
// connection.
func (l *Link) Set(mode LinkMode, delay time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.mu.mode, l.mu.delay = mode, delay
	close(l.mu.changed)
	l.mu.changed = make(chan struct{})
	if mode == Cut {
		for c := range l.mu.conns {
			c.Close()
		}
	}
}

// Mode returns the current mode and delay.
func (l *Link) Mode() (LinkMode, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.mu.mode, l.mu.delay
}

// Close stops the proxy and waits for its goroutines.
func (l *Link) Close() {
	l.mu.Lock()
	l.mu.closed = true
	close(l.mu.changed)
	l.mu.changed = make(chan struct{})
	for c := range l.mu.conns {
		c.Close()
	}
	l.mu.Unlock()
	l.ln.Close()
	l.wg.Wait()
}

// track registers c; it returns false (and closes c) when the link is cut
// or closed.
func (l *Link) track(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.mu.closed || l.mu.mode == Cut {
		c.Close()
		return false
	}
	l.mu.conns[c] = struct{}{}
	return true
}

func (l *Link) untrack(c net.Conn) {
	l.mu.Lock()
	delete(l.mu.conns, c)
	l.mu.Unlock()
	c.Close()
}

func (l *Link) accept() {
	for {
		c, err := l.ln.Accept()
		if err != nil {
			return // listener closed
		}
		if !l.track(c) {
			continue
		}
		l.goFunc(func() { l.serve(c) })
	}
}

// serve connects c to the target and pumps both directions until either
// side closes or the link is cut.
func (l *Link) serve(c net.Conn) {
	defer l.untrack(c)
	if !l.gate() {
		return
	}
	up, err := net.DialTimeout("tcp", l.target, 2*time.Second)
	if err != nil {
		return
	}
	if !l.track(up) {
		return
	}
	defer l.untrack(up)
	done := make(chan struct{}, 2)
	l.goFunc(func() { l.pump(up, c); done <- struct{}{} })
	l.goFunc(func() { l.pump(c, up); done <- struct{}{} })
	<-done
	c.Close()
	up.Close()
	<-done
}

// gate blocks while the link is stalled and reports whether traffic may
// pass (false: cut or closed).
func (l *Link) gate() bool {
	for {
		l.mu.Lock()
		mode, closed, ch := l.mu.mode, l.mu.closed, l.mu.changed
		l.mu.Unlock()
		switch {
		case closed || mode == Cut:
			return false
		case mode == Up:
			return true
		}
		<-ch
	}
}

// pump copies src to dst chunk by chunk, holding each chunk while the link
// is stalled and delaying it by the link's delay.
func (l *Link) pump(dst, src net.Conn) {
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !l.gate() {
				return
			}
			if _, d := l.Mode(); d > 0 {
				time.Sleep(d)
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				return
			}
			if tc, ok := dst.(*net.TCPConn); ok {
				tc.CloseWrite()
			}
			return
		}
	}
}
