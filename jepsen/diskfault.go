package jepsen

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/tsstore/tsstore/internal/proccluster"
)

// The disk-full nemesis fills real filesystems: every node's data
// directory is a small tmpfs of its own (DiskSpec), and a fault puts a
// filler file on the filesystems of one follower, the leader, a majority
// (two random nodes) or all three, or fills one node and kills and
// restarts it on its full disk. Two depths:
//
//   - low: the free space is left just below the node's --min-free-bytes
//     (DiskSpec.LowMargin below it). Writes still succeed; the node must
//     notice (Status.disk_problem, health NOT_SERVING) and, when it leads
//     or a majority of voters is low, the leader must refuse appends at
//     once with ResourceExhausted/DISK_FULL.
//   - full: nothing is left. Real writes fail with ENOSPC: the segment log
//     (the FSM stops and the node exits non-zero), raft-wal when it
//     rolls to a new preallocated file, snapshots.
//
// While a fault lasts the nemesis is the nodes' supervisor, as systemd is
// in production (deploy/systemd: Restart=on-failure,
// RestartPreventExitStatus=78): a node whose process ends on its own is
// recorded with its exit status and started again restartSec later, on
// its still full disk, unless it exited 78. Healing deletes the fillers
// and starts any node that is down at once. The nemesis then waits up to
// recoverWithin until every node runs, serves and reports no disk problem.
//
// Everything it saw goes into the fault's DiskFault, which rule 11
// (diskcheck.go) judges with the history.

// Disk-fault timing.
const (
	// restartSec is the supervisor's pause before it restarts a node that
	// exited (systemd's RestartSec, 5 s in deploy/systemd, shortened to
	// fit the short profile).
	restartSec = time.Second
	// detectWithin bounds the wait, after the fill, for every filled node
	// to report its disk problem or exit.
	detectWithin = 5 * time.Second
	// recoverWithin bounds the wait, after the heal, for every node to run,
	// serve and report no disk problem; rule 11 holds the cluster to it.
	recoverWithin = 20 * time.Second
	// downForRestart is how long a restart fault keeps its node down on
	// its filled disk: long enough for the others' log to move past
	// trailing-logs, so it needs InstallSnapshot when it comes back.
	downForRestart = 1500 * time.Millisecond
	diskPoll       = 200 * time.Millisecond
)

// DiskFault is what the nemesis did and saw in one disk fault.
type DiskFault struct {
	Depth string `json:"depth"` // "low" or "full"
	Scope string `json:"scope"` // follower, leader, majority, all, restart
	// Leader is the leader when the fault began, LeaderAtHeal when the
	// fillers were deleted ("" if none was known).
	Leader       string       `json:"leader,omitempty"`
	LeaderAtHeal string       `json:"leader_at_heal,omitempty"`
	Targets      []DiskTarget `json:"targets"`
	// Filled: every filler in place (and, for a restart, the node started
	// again on its disk).
	Filled time.Duration `json:"filled_ns"`
	// Settled: every running filled node had reported its problem or had
	// exited; 0 if that did not happen within detectWithin.
	Settled time.Duration `json:"settled_ns,omitempty"`
	// Healed: the fillers were deleted.
	Healed time.Duration `json:"healed_ns"`
	// Recovered: every node ran, served and reported no disk problem; 0 if
	// not within recoverWithin of the heal.
	Recovered time.Duration `json:"recovered_ns,omitempty"`
	// Exits are processes that ended on their own during the fault, on any
	// node; Restarts counts the supervisor's restarts.
	Exits    []DiskExit `json:"exits,omitempty"`
	Restarts int        `json:"restarts,omitempty"`
	// Cut: the nemesis's time ran out before the recovery wait ended.
	Cut bool `json:"cut,omitempty"`
	// Terms are the leaders seen during the fault, each when first seen.
	Terms []LeaderObservation `json:"terms,omitempty"`
}

// DiskTarget is one filled node.
type DiskTarget struct {
	Node      string `json:"node"`
	Filled    int64  `json:"filled_bytes"`
	FreeAfter int64  `json:"free_after_fill_bytes"`
	// Starts are the times its process was started during the fault; Reports
	// the first Status with a disk problem after the fill and after each
	// start (a restart makes the leader's view of its disk unknown again).
	Starts  []time.Duration `json:"starts_ns,omitempty"`
	Reports []time.Duration `json:"reports_ns,omitempty"`
	Problem string          `json:"problem,omitempty"` // the first reported
	// NotServing: its health service said NOT_SERVING during the fault.
	NotServing bool `json:"not_serving,omitempty"`
	// Snapshots are the InstallSnapshot requests that reached its Raft from
	// the fill until the heal (by its log: each is refused, fails or
	// installs); SnapshotsDropped more lines of those its log's flood
	// limit dropped.
	Snapshots        []time.Duration `json:"snapshot_streams_ns,omitempty"`
	SnapshotsDropped int             `json:"snapshot_streams_dropped,omitempty"`
	// Cleared is the first Status without a disk problem after the heal.
	Cleared time.Duration `json:"cleared_ns,omitempty"`
	// Exited: its process ended on its own at least once.
	Exited bool `json:"exited,omitempty"`
	// Reclaimed: before it reported anything, its free space was back at
	// or above its --min-free-bytes by its own doing (Raft log truncated
	// after a snapshot, old snapshots reaped): it had nothing to report.
	Reclaimed bool `json:"reclaimed,omitempty"`
}

// DiskExit is a node process that ended on its own.
type DiskExit struct {
	Node string        `json:"node"`
	Code int           `json:"code"`
	At   time.Duration `json:"at_ns"`
	Last string        `json:"last_error,omitempty"` // the last error line of its log
}

// diskWatch is the nemesis's state while it supervises a disk fault.
type diskWatch struct {
	df      *DiskFault
	target  map[string]int           // node id -> index in df.Targets
	down    map[string]time.Duration // noticed down since
	held    map[string]bool          // kept down on purpose
	problem map[string]bool          // reporting a problem since its last start
	healed  bool
}

// diskFault runs one disk fault: kind is disk-<low|full>-<scope>.
func (n *nemesis) diskFault(ctx context.Context, p PlannedFault, f *Fault) {
	_, rest, _ := strings.Cut(p.Kind, "-")
	depth, scope, _ := strings.Cut(rest, "-")
	df := &DiskFault{Depth: depth, Scope: scope}
	f.Disk = df
	leader := n.c.leader(ctx)
	if leader != nil {
		df.Leader = leader.ID
	}
	targets := n.diskTargets(ctx, scope, leader)
	w := &diskWatch{df: df, target: map[string]int{}, down: map[string]time.Duration{},
		held: map[string]bool{}, problem: map[string]bool{}}
	logFrom := map[string]int64{}
	var ids []string
	for i, t := range targets {
		ids = append(ids, t.ID)
		w.target[t.ID] = i
		logFrom[t.ID] = fileSize(t.LogPath)
		filled, free, err := fill(t.DataDir, depth, n.disk)
		n.fillers[t.DataDir] = true
		if err != nil {
			n.failures = append(n.failures, fmt.Sprintf("filling %s's disk: %v", t.ID, err))
		}
		df.Targets = append(df.Targets, DiskTarget{Node: t.ID, Filled: filled, FreeAfter: free})
	}
	f.Target = strings.Join(ids, ",")
	if scope == "restart" {
		t := targets[0]
		w.held[t.ID] = true
		t.Kill()
		n.superviseFor(ctx, w, downForRestart, nil)
		delete(w.held, t.ID)
		n.startNode(w, t)
	}
	df.Filled = n.rec.now()
	if n.superviseFor(ctx, w, detectWithin, w.settled) {
		df.Settled = n.rec.now()
	}
	n.superviseFor(ctx, w, p.Duration, nil)

	if l := n.c.leader(ctx); l != nil {
		df.LeaderAtHeal = l.ID
	}
	for _, t := range targets {
		if err := removeFiller(t.DataDir); err != nil {
			n.failures = append(n.failures, fmt.Sprintf("deleting %s's filler: %v", t.ID, err))
		}
		delete(n.fillers, t.DataDir)
	}
	df.Healed = n.rec.now()
	w.healed = true
	if n.superviseFor(ctx, w, recoverWithin, func() bool { return n.recovered(ctx, w) }) {
		df.Recovered = n.rec.now()
	} else if ctx.Err() != nil {
		df.Cut = true // the nemesis's time ran out; the final phase judges recovery
	}
	for _, t := range targets {
		tg := &df.Targets[w.target[t.ID]]
		tg.Snapshots, tg.SnapshotsDropped = snapshotStreams(t.LogPath, logFrom[t.ID], n.rec.start, df.Healed)
	}
	f.Detail = df.describe()
}

// diskTargets picks the nodes a disk fault fills.
func (n *nemesis) diskTargets(ctx context.Context, scope string, leader *proccluster.Node) []*proccluster.Node {
	switch scope {
	case "leader", "follower":
		return []*proccluster.Node{n.pick(ctx, scope)}
	case "majority":
		i := n.rng.IntN(3)
		return []*proccluster.Node{n.c.nodes[i], n.c.nodes[(i+1+n.rng.IntN(2))%3]}
	case "all":
		return n.c.nodes
	}
	return []*proccluster.Node{n.c.nodes[n.rng.IntN(len(n.c.nodes))]} // restart
}

// superviseFor supervises the cluster every diskPoll for d, or until done
// reports true (then it returns true).
func (n *nemesis) superviseFor(ctx context.Context, w *diskWatch, d time.Duration, done func() bool) bool {
	for end := n.rec.now() + d; ; {
		n.supervise(ctx, w)
		if done != nil && done() {
			return true
		}
		if n.rec.now() >= end || ctx.Err() != nil {
			return false
		}
		sleepCtx(ctx, diskPoll)
	}
}

// supervise notices processes that ended and restarts them (at once once
// healed, else after restartSec, never after exit 78), and reads every
// running filled node's Status and health.
func (n *nemesis) supervise(ctx context.Context, w *diskWatch) {
	now := n.rec.now()
	for _, x := range n.c.nodes {
		i, isTarget := w.target[x.ID]
		if !x.Running() {
			if w.held[x.ID] {
				continue
			}
			since, seen := w.down[x.ID]
			if !seen {
				since = now
				w.down[x.ID] = now
				e := DiskExit{Node: x.ID, Code: x.ExitCode(), At: now, Last: lastError(x.Logs())}
				w.df.Exits = append(w.df.Exits, e)
				if isTarget {
					w.df.Targets[i].Exited = true
				}
			}
			if code := x.ExitCode(); code != exitPermanent && (w.healed || now-since >= restartSec) {
				n.startNode(w, x)
				w.df.Restarts++
			}
			continue
		}
		st, err := nodeStatus(ctx, x)
		if err != nil {
			continue
		}
		if st.Role == "leader" && !slices.ContainsFunc(w.df.Terms, func(o LeaderObservation) bool { return o.Term == st.Term }) {
			w.df.Terms = append(w.df.Terms, LeaderObservation{At: now, Leader: x.ID, Term: st.Term})
		}
		if !isTarget {
			continue
		}
		t := &w.df.Targets[i]
		if !w.healed && len(t.Reports) == 0 && !t.Reclaimed && st.DiskProblem == "" {
			if free, _, err := fsFree(x.DataDir); err == nil && free >= n.disk.MinFree {
				t.Reclaimed = true
			}
		}
		switch {
		case !w.healed && st.DiskProblem != "" && !w.problem[x.ID]:
			w.problem[x.ID] = true
			t.Reports = append(t.Reports, now)
			if t.Problem == "" {
				t.Problem = st.DiskProblem
			}
		case w.healed && st.DiskProblem == "" && t.Cleared == 0:
			t.Cleared = now
		}
		if !w.healed && !t.NotServing {
			if serving, err := nodeServing(ctx, x); err == nil && !serving {
				t.NotServing = true
			}
		}
	}
}

// exitPermanent is the exit status of a node that a restart cannot mend
// (cmd/tsstore); systemd does not restart it.
const exitPermanent = 78

// startNode starts a node that is down and records the start.
func (n *nemesis) startNode(w *diskWatch, x *proccluster.Node) {
	if err := x.Start(); err != nil {
		n.logf("  disk fault: starting %s: %v", x.ID, err)
		return
	}
	delete(w.down, x.ID)
	w.problem[x.ID] = false
	if i, ok := w.target[x.ID]; ok {
		w.df.Targets[i].Starts = append(w.df.Targets[i].Starts, n.rec.now())
	}
}

// settled reports whether every filled node has reported its problem
// since its last start, or is down.
func (w *diskWatch) settled() bool {
	for id := range w.target {
		if _, down := w.down[id]; !w.problem[id] && !down && !w.held[id] {
			return false
		}
	}
	return true
}

// recovered reports whether, after the heal, every node runs and serves
// and no filled node reports a disk problem.
func (n *nemesis) recovered(ctx context.Context, w *diskWatch) bool {
	for _, x := range n.c.nodes {
		if !x.Running() {
			return false
		}
		if serving, err := nodeServing(ctx, x); err != nil || !serving {
			return false
		}
		if _, ok := w.target[x.ID]; ok {
			if st, err := nodeStatus(ctx, x); err != nil || st.DiskProblem != "" {
				return false
			}
		}
	}
	return true
}

// nodeServing asks a node's gRPC health service about the whole server.
func nodeServing(ctx context.Context, x *proccluster.Node) (bool, error) {
	conn, err := grpc.NewClient(x.APIAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return false, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return false, err
	}
	return resp.Status == healthpb.HealthCheckResponse_SERVING, nil
}

// describe renders a disk fault for the fault's Detail.
func (df *DiskFault) describe() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s; leader %s", df.Depth, orNone(df.Leader))
	for _, t := range df.Targets {
		fmt.Fprintf(&b, "; %s: filled %d MiB, %d MiB free", t.Node, t.Filled>>20, t.FreeAfter>>20)
		if len(t.Reports) > 0 {
			fmt.Fprintf(&b, ", reported %v after the fill", (t.Reports[0] - df.Filled).Round(time.Millisecond))
		}
		if t.NotServing {
			b.WriteString(", NOT_SERVING")
		}
		if n := len(t.Snapshots) + t.SnapshotsDropped; n > 0 {
			fmt.Fprintf(&b, ", %d snapshot streams reached it", n)
		}
		if t.Cleared > 0 {
			fmt.Fprintf(&b, ", cleared %v after the heal", (t.Cleared - df.Healed).Round(time.Millisecond))
		}
	}
	for _, e := range df.Exits {
		fmt.Fprintf(&b, "; %s exited %d at %v", e.Node, e.Code, e.At.Round(time.Millisecond))
	}
	if df.Restarts > 0 {
		fmt.Fprintf(&b, "; %d restarts", df.Restarts)
	}
	if df.Settled == 0 {
		fmt.Fprintf(&b, "; NOT every filled node reported or exited within %v", detectWithin)
	}
	if df.Cut {
		b.WriteString("; cut short by the end of the fault window")
	} else if df.Recovered > 0 {
		fmt.Fprintf(&b, "; recovered %v after the heal", (df.Recovered - df.Healed).Round(time.Millisecond))
	} else {
		fmt.Fprintf(&b, "; NOT recovered within %v of the heal", recoverWithin)
	}
	return b.String()
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// snapshotMessages are the log messages with which hashicorp/raft (v1.7)
// ends the handling of an InstallSnapshot request it received: one per
// request that reached the node's Raft.
var snapshotMessages = []string{
	"failed to create snapshot to install", // the node refused before writing (server/snapguard.go)
	"failed to copy snapshot",
	"failed to receive whole snapshot",
	"failed to finalize snapshot",
	"copied to local snapshot",
}

// snapshotStreams reads a node's log from offset from and returns when
// each InstallSnapshot request reached it, as run times, before until, and
// how many more the log's flood limit dropped (the "dropped" count of
// the next line of that message let through).
func snapshotStreams(path string, from int64, start time.Time, until time.Duration) ([]time.Duration, int) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0
	}
	defer f.Close()
	if _, err := f.Seek(from, io.SeekStart); err != nil {
		return nil, 0
	}
	return parseSnapshotStreams(f, start, until)
}

// parseSnapshotStreams is snapshotStreams on a reader of JSON log lines,
// the node's (slog: time, msg) and raft's (hclog: @timestamp, @message).
func parseSnapshotStreams(r io.Reader, start time.Time, until time.Duration) (at []time.Duration, dropped int) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if !isSnapshotLine(line) {
			continue
		}
		var l struct {
			Time    time.Time `json:"time"`
			HCTime  string    `json:"@timestamp"`
			Msg     string    `json:"msg"`
			HCMsg   string    `json:"@message"`
			Dropped int       `json:"dropped"`
		}
		if json.Unmarshal(line, &l) != nil {
			continue
		}
		msg, t := l.Msg, l.Time
		if l.HCMsg != "" {
			msg = l.HCMsg
			t, _ = time.Parse(time.RFC3339Nano, l.HCTime)
		}
		if !isSnapshotMessage(msg) || t.IsZero() {
			continue
		}
		if d := t.Sub(start); d < until {
			at = append(at, d)
			dropped += l.Dropped
		}
	}
	return at, dropped
}

func isSnapshotLine(line []byte) bool {
	for _, m := range snapshotMessages {
		if strings.Contains(string(line), m) {
			return true
		}
	}
	return false
}

func isSnapshotMessage(msg string) bool {
	for _, m := range snapshotMessages {
		if msg == m {
			return true
		}
	}
	return false
}
