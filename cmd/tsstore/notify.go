package main

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/tsstore/tsstore/server"
)

// systemd integration for `tsstore serve` (deploy/systemd/tsstore.service,
// Type=notify). The sd_notify protocol is one datagram of newline-separated
// KEY=VALUE lines to the unix socket named by $NOTIFY_SOCKET (a name
// starting with '@' is in the abstract namespace; Go's net package maps the
// '@' to the leading NUL). It is a few lines, so no dependency.
//
//   - READY=1 once the node's health is SERVING (it knows a leader and has
//     caught up), so `systemctl start` returns when the node serves;
//   - STATUS=... on every health change and every statusEvery
//     (`systemctl status tsstore` shows it);
//   - WATCHDOG=1 every WATCHDOG_USEC/2 while server.Node.Live reports the
//     node can make progress (not merely while it is SERVING: a node cut
//     off from its peers must not be restarted for that);
//   - STOPPING=1 on SIGTERM, before Close drains the API.
//
// Without $NOTIFY_SOCKET all of this is off.

// statusEvery is how often the STATUS= line is refreshed at most.
const statusEvery = 5 * time.Second

// sdConn sends sd_notify datagrams.
type sdConn struct {
	conn *net.UnixConn
}

// openSDNotify connects to $NOTIFY_SOCKET; nil (and no error) when unset.
func openSDNotify() (*sdConn, error) {
	name := os.Getenv("NOTIFY_SOCKET")
	if name == "" {
		return nil, nil
	}
	if name[0] != '/' && name[0] != '@' {
		return nil, fmt.Errorf("NOTIFY_SOCKET %q: want an absolute path or @abstract name", name)
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("NOTIFY_SOCKET: %w", err)
	}
	return &sdConn{conn: c}, nil
}

func (s *sdConn) send(state string) error {
	_, err := s.conn.Write([]byte(state))
	return err
}

// watchdogInterval is half of $WATCHDOG_USEC, or 0 when systemd asks for
// no watchdog pings (unset, or meant for another process).
func watchdogInterval() (time.Duration, error) {
	v := os.Getenv("WATCHDOG_USEC")
	if v == "" {
		return 0, nil
	}
	if pid := os.Getenv("WATCHDOG_PID"); pid != "" && pid != strconv.Itoa(os.Getpid()) {
		return 0, nil
	}
	usec, err := strconv.ParseUint(v, 10, 63)
	if err != nil || usec == 0 {
		return 0, fmt.Errorf("WATCHDOG_USEC %q: want a positive number of microseconds", v)
	}
	return time.Duration(usec) * time.Microsecond / 2, nil
}

// notifier runs the notify loop for one node.
type notifier struct {
	sd       *sdConn
	node     *server.Node
	logger   *slog.Logger
	watchdog time.Duration
	stop     chan struct{}
	once     sync.Once
	wg       sync.WaitGroup
}

// openNotify connects to systemd's notify socket: nil when not run under
// a notify-type unit, or (logged) when the environment is wrong.
func openNotify(logger *slog.Logger) *sdConn {
	sd, err := openSDNotify()
	if err == nil && sd != nil {
		_, err = watchdogInterval()
	}
	if err != nil {
		logger.Warn("systemd notification disabled", "error", err)
		if sd != nil {
			sd.conn.Close()
		}
		return nil
	}
	return sd
}

// openStatus tells systemd what the node is doing while server.New opens
// it (Config.OnOpen): STATUS=opening: <step>, with EXTEND_TIMEOUT_USEC so
// that a bounded start timeout is pushed back while the node makes
// progress, repeated every openExtendEvery. A slow open never looks like a
// hang. A nil *openStatus does nothing.
type openStatus struct {
	sd   *sdConn
	mu   sync.Mutex
	step string
	stop chan struct{}
	wg   sync.WaitGroup
}

const (
	openExtendEvery = 5 * time.Second
	openExtendBy    = 30 * time.Second
)

func startOpenStatus(sd *sdConn) *openStatus {
	if sd == nil {
		return nil
	}
	o := &openStatus{sd: sd, step: "starting", stop: make(chan struct{})}
	o.wg.Go(func() {
		t := time.NewTicker(openExtendEvery)
		defer t.Stop()
		for {
			o.send()
			select {
			case <-t.C:
			case <-o.stop:
				return
			}
		}
	})
	return o
}

// onOpen is Config.OnOpen.
func (o *openStatus) onOpen(step string) {
	if o == nil {
		return
	}
	o.mu.Lock()
	o.step = step
	o.mu.Unlock()
	o.send()
}

func (o *openStatus) send() {
	o.mu.Lock()
	msg := fmt.Sprintf("STATUS=opening: %s\nEXTEND_TIMEOUT_USEC=%d\n", o.step, openExtendBy.Microseconds())
	o.mu.Unlock()
	o.sd.send(msg)
}

// done stops the repeats; New has returned.
func (o *openStatus) done() {
	if o == nil {
		return
	}
	close(o.stop)
	o.wg.Wait()
}

// startNotify starts telling systemd about node; it returns nil when not
// run under a notify-type unit (sd nil). A nil *notifier is ready to stop.
func startNotify(sd *sdConn, node *server.Node, logger *slog.Logger) *notifier {
	if sd == nil {
		return nil
	}
	wd, _ := watchdogInterval() // checked by openNotify
	n := &notifier{sd: sd, node: node, logger: logger, watchdog: wd, stop: make(chan struct{})}
	n.wg.Go(n.run)
	return n
}

func (n *notifier) run() {
	var ping <-chan time.Time
	if n.watchdog > 0 {
		t := time.NewTicker(n.watchdog)
		defer t.Stop()
		ping = t.C
		n.pingWatchdog()
	}
	refresh := time.NewTicker(statusEvery)
	defer refresh.Stop()
	ready, last := false, ""
	for {
		changed := n.node.HealthChanged()
		serving, _ := n.node.Health()
		msg := ""
		if serving && !ready {
			ready = true
			msg = "READY=1\n"
			n.logger.Info("told systemd the node is ready")
		}
		if st := statusLine(n.node); st != last {
			msg += "STATUS=" + st + "\n"
			last = st
		}
		if msg != "" {
			n.send(msg)
		}
		select {
		case <-changed:
		case <-refresh.C:
		case <-ping:
			n.pingWatchdog()
		case <-n.stop:
			return
		}
	}
}

func (n *notifier) pingWatchdog() {
	if err := n.node.Live(); err != nil {
		n.logger.Error("not pinging the systemd watchdog", "error", err)
		n.send("STATUS=watchdog withheld: " + err.Error() + "\n")
		return
	}
	n.send("WATCHDOG=1\n")
}

func (n *notifier) send(msg string) {
	if err := n.sd.send(msg); err != nil {
		n.logger.Warn("sd_notify", "error", err)
	}
}

// stopping ends the loop and tells systemd the node is stopping, with why.
// Call it before node.Close.
func (n *notifier) stopping(why string) {
	if n == nil {
		return
	}
	n.once.Do(func() {
		close(n.stop)
		n.wg.Wait()
		n.send("STOPPING=1\nSTATUS=" + why + "\n")
		n.sd.conn.Close()
	})
}

// statusLine summarises the node for systemctl status, e.g.
// "serving: leader n1, term 3, applied 123".
func statusLine(node *server.Node) string {
	serving, reason := node.Health()
	state := "serving"
	if !serving {
		state = "not serving (" + reason + ")"
	}
	r := node.Raft()
	who := "no leader"
	if _, id := r.LeaderWithID(); id != "" {
		who = "leader " + string(id)
		if r.State() == raft.Leader {
			who += " (this node)"
		}
	}
	return fmt.Sprintf("%s: %s, term %d, applied %d", state, who, r.CurrentTerm(), node.Processor().AppliedIndex())
}
