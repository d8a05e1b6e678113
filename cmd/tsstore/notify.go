package main

import (
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/hashicorp/raft"

	"github.com/tsstore/tsstore/server"
)

// systemd integration for `tsstore serve` (deploy/systemd/tsstore.service,
// Type=notify), through github.com/coreos/go-systemd/v22/daemon:
//
//   - STATUS=opening: <step> with EXTEND_TIMEOUT_USEC while server.New
//     opens the data, so the unit's bounded TimeoutStartSec is pushed back
//     while the node makes progress (openStatus);
//   - READY=1 once the node's health is SERVING (it knows a leader and has
//     caught up), or readyGrace after it opened without that: readiness
//     never waits for a quorum for ever, so `systemctl start` and
//     `systemctl restart` return even when the other nodes are down (the
//     STATUS line then says the node is not serving yet). Until READY=1
//     the start timeout is extended too;
//   - STATUS=... on every health change and every statusEvery
//     (`systemctl status tsstore` shows it);
//   - WATCHDOG=1 at half of WatchdogSec while server.Node.Live reports the
//     node can make progress (not merely while it is SERVING: a node cut
//     off from its peers must not be restarted for that);
//   - STOPPING=1 on SIGTERM, before Close drains the API.
//
// Without $NOTIFY_SOCKET all of this is off.

const (
	// statusEvery is how often the STATUS= line is refreshed at most.
	statusEvery = 5 * time.Second
	// readyGrace is how long after opening the node waits to be SERVING
	// before it reports READY=1 anyway.
	readyGrace = 30 * time.Second
)

// sdConn sends sd_notify datagrams; nil when not run under a notify unit.
type sdConn struct{}

func (*sdConn) send(state string) error {
	_, err := daemon.SdNotify(false, state)
	return err
}

// watchdogInterval is half of systemd's WatchdogSec, or 0 when systemd
// asks for no watchdog pings (unset, or meant for another process).
func watchdogInterval() (time.Duration, error) {
	d, err := daemon.SdWatchdogEnabled(false)
	return d / 2, err
}

// notifier runs the notify loop for one node.
type notifier struct {
	sd       *sdConn
	node     *server.Node
	logger   *slog.Logger
	watchdog time.Duration
	grace    time.Duration // readyGrace
	stop     chan struct{}
	once     sync.Once
	wg       sync.WaitGroup
}

// openNotify returns the notify sender: nil when not run under a
// notify-type unit, or (logged) when the watchdog environment is wrong.
func openNotify(logger *slog.Logger) *sdConn {
	if os.Getenv("NOTIFY_SOCKET") == "" {
		return nil
	}
	if _, err := watchdogInterval(); err != nil {
		logger.Warn("systemd notification disabled", "error", err)
		return nil
	}
	return &sdConn{}
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
// It reports READY=1 at the latest grace after it starts (readyGrace).
func startNotify(sd *sdConn, node *server.Node, logger *slog.Logger, grace time.Duration) *notifier {
	if sd == nil {
		return nil
	}
	wd, _ := watchdogInterval() // checked by openNotify
	n := &notifier{sd: sd, node: node, logger: logger, watchdog: wd, grace: grace, stop: make(chan struct{})}
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
	grace := time.NewTimer(n.grace)
	defer grace.Stop()
	ready, graceOver, last := false, false, ""
	for {
		changed := n.node.HealthChanged()
		serving, _ := n.node.Health()
		msg := ""
		if (serving || graceOver) && !ready {
			ready = true
			msg = "READY=1\n"
			n.logger.Info("told systemd the node is ready", "serving", serving)
		}
		if st := statusLine(n.node); st != last {
			msg += "STATUS=" + st + "\n"
			last = st
		}
		if !ready {
			// Keep the bounded start timeout from firing while the node
			// waits for a leader, up to readyGrace.
			msg += fmt.Sprintf("EXTEND_TIMEOUT_USEC=%d\n", openExtendBy.Microseconds())
		}
		if msg != "" {
			n.send(msg)
		}
		select {
		case <-changed:
		case <-refresh.C:
		case <-grace.C:
			graceOver = true
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
