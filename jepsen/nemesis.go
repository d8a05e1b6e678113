package jepsen

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tsstore/tsstore/internal/proccluster"
	pb "github.com/tsstore/tsstore/proto/tsstorev1"
)

// PlannedFault is one entry of the seeded fault schedule. Targets (which
// node is leader) are chosen when the fault is injected.
type PlannedFault struct {
	At       time.Duration `json:"at_ns"`
	Kind     string        `json:"kind"`
	Duration time.Duration `json:"duration_ns"`
}

// planFaults draws the schedule for [from, to): a fault, a quiet pause, a
// fault, ... Every fault, with the scenario's Overhead, ends before to.
func planFaults(rng *rand.Rand, s Scenario, from, to time.Duration) []PlannedFault {
	between := func(r [2]time.Duration) time.Duration {
		return r[0] + time.Duration(rng.Int64N(int64(r[1]-r[0])+1))
	}
	var plan []PlannedFault
	for t := from; ; {
		p := PlannedFault{At: t, Kind: s.Faults[rng.IntN(len(s.Faults))], Duration: between(s.Active)}
		if t+p.Duration+s.Overhead > to {
			return plan
		}
		plan = append(plan, p)
		t += p.Duration + s.Overhead + between(s.Quiet)
	}
}

// nemesis injects faults into a cluster and records them.
type nemesis struct {
	c    *cluster
	rec  *recorder
	rng  *rand.Rand
	logf func(format string, args ...any)
	// failures are violations the nemesis saw itself, outside the
	// history (a removed node that kept running); they fail the run.
	failures []string
	// disk is the scenario's per-node filesystems (disk-full), fillers the
	// data directories holding a filler now.
	disk    *DiskSpec
	fillers map[string]bool
}

// run follows the plan, then heals everything. It returns early (healed)
// when ctx is done.
func (n *nemesis) run(ctx context.Context, plan []PlannedFault) {
	defer n.healAll()
	for _, p := range plan {
		sleepCtx(ctx, p.At-n.rec.now())
		if ctx.Err() != nil {
			return
		}
		f := Fault{Kind: p.Kind, Start: n.rec.now()}
		n.inject(ctx, p, &f)
		f.End = n.rec.now()
		n.logf("  fault %-22s %-4s %8v..%-8v %s", f.Kind, f.Target, f.Start.Round(time.Millisecond), f.End.Round(time.Millisecond), f.Detail)
		n.rec.fault(f)
	}
}

// healAll heals the network, frees the disks and resumes or restarts
// every node.
func (n *nemesis) healAll() {
	n.c.net.Heal()
	for dir := range n.fillers {
		if err := removeFiller(dir); err != nil {
			n.logf("  heal: %v", err)
		}
		delete(n.fillers, dir)
	}
	for _, node := range n.c.nodes {
		node.Signal(syscall.SIGCONT)
		if !node.Running() {
			if err := node.Start(); err != nil {
				n.logf("  heal: starting %s: %v", node.ID, err)
			}
		}
	}
}

// pick returns the leader ("leader") or a node that is not the leader.
func (n *nemesis) pick(ctx context.Context, role string) *proccluster.Node {
	l := n.c.leader(ctx)
	if role == "leader" && l != nil {
		return l
	}
	var cands []*proccluster.Node
	for _, x := range n.c.nodes {
		if x != l {
			cands = append(cands, x)
		}
	}
	return cands[n.rng.IntN(len(cands))]
}

// linkMode picks how a partition fails: refused connections or silence.
func (n *nemesis) linkMode() LinkMode {
	if n.rng.IntN(2) == 0 {
		return Cut
	}
	return Stall
}

// inject applies one fault for its duration and heals it.
func (n *nemesis) inject(ctx context.Context, p PlannedFault, f *Fault) {
	role := "follower"
	if strings.HasSuffix(p.Kind, "-leader") {
		role = "leader"
	}
	switch kind, _, _ := strings.Cut(p.Kind, "-"); kind {
	case "kill", "term", "pause":
		if p.Kind == "kill-all" {
			n.killAll(ctx, p.Duration, f)
			return
		}
		n.process(ctx, kind, n.pick(ctx, role), p.Duration, f)
	case "isolate":
		t := n.pick(ctx, role)
		mode := n.linkMode()
		f.Target, f.Detail = t.ID, mode.String()
		installs := snapshotInstalls(t)
		n.c.net.Isolate(t.ID, mode)
		sleepCtx(ctx, p.Duration)
		n.c.net.Heal()
		if p.Kind == "isolate-follower-long" {
			f.Detail += "; " + n.awaitSnapshotInstall(ctx, t, installs)
		}
	case "bridge", "oneway", "stall", "slow", "flap":
		n.network(ctx, p, f)
	case "transfer":
		n.transfer(ctx, p.Kind == "transfer-any", f)
		sleepCtx(ctx, p.Duration)
	case "corrupt":
		n.corrupt(ctx, p.Duration, f, "follower", false)
	case "bitrot":
		// Any node, the leader too; its segments or its Raft log.
		n.corrupt(ctx, p.Duration, f, []string{"leader", "follower"}[n.rng.IntN(2)], n.rng.IntN(2) == 0)
	case "remove":
		n.membership(ctx, p, f)
	case "disk":
		n.diskFault(ctx, p, f)
	case "wipe":
		t := n.pick(ctx, "follower")
		f.Target = t.ID
		if err := t.Kill(); err != nil {
			f.Detail = err.Error()
			return
		}
		f.Detail = errText(t.Wipe(), "wiped")
		sleepCtx(ctx, p.Duration)
		f.Detail += "; " + errText(t.Start(), "restarted empty (rejoins through InstallSnapshot)")
	default:
		f.Detail = "unknown fault kind"
	}
}

func errText(err error, ok string) string {
	if err != nil {
		return err.Error()
	}
	return ok
}

// process kills (SIGKILL), terminates (SIGTERM) or pauses (SIGSTOP) a node
// for d, then restarts or resumes it.
func (n *nemesis) process(ctx context.Context, kind string, t *proccluster.Node, d time.Duration, f *Fault) {
	f.Target = t.ID
	switch kind {
	case "kill":
		f.Detail = errText(t.Kill(), "SIGKILL")
	case "term":
		f.Detail = errText(t.Stop(10*time.Second), "SIGTERM")
	case "pause":
		f.Detail = errText(t.Signal(syscall.SIGSTOP), "SIGSTOP")
		sleepCtx(ctx, d)
		f.Detail += "; " + errText(t.Signal(syscall.SIGCONT), "SIGCONT")
		return
	}
	sleepCtx(ctx, d)
	f.Detail += "; " + errText(t.Start(), "restarted")
}

// killAll SIGKILLs every node at once and restarts them all.
func (n *nemesis) killAll(ctx context.Context, d time.Duration, f *Fault) {
	f.Target = "all"
	for _, t := range n.c.nodes {
		t.Signal(syscall.SIGKILL)
	}
	for _, t := range n.c.nodes {
		if err := t.Kill(); err != nil {
			f.Detail += err.Error() + "; "
		}
	}
	sleepCtx(ctx, d)
	for _, t := range n.c.nodes {
		if err := t.Start(); err != nil {
			f.Detail += err.Error() + "; "
		}
	}
	f.Detail += "SIGKILL all; restarted all"
}

// network applies a link-level fault.
func (n *nemesis) network(ctx context.Context, p PlannedFault, f *Fault) {
	ids := []string{"n1", "n2", "n3"}
	n.rng.Shuffle(len(ids), func(i, j int) { ids[i], ids[j] = ids[j], ids[i] })
	net := n.c.net
	switch p.Kind {
	case "bridge":
		mode := n.linkMode()
		f.Target, f.Detail = ids[1], fmt.Sprintf("%s and %s cut (%v), both reach %s", ids[0], ids[2], mode, ids[1])
		net.Bridge(ids[0], ids[2], mode)
	case "oneway":
		f.Target, f.Detail = ids[0], fmt.Sprintf("%s->%s cut; %s->%s up", ids[0], ids[1], ids[1], ids[0])
		net.OneWay(ids[0], ids[1], Cut)
	case "stall-link":
		f.Target, f.Detail = ids[0], fmt.Sprintf("%s->%s stalled", ids[0], ids[1])
		net.OneWay(ids[0], ids[1], Stall)
	case "slow":
		d := time.Duration(20+n.rng.IntN(80)) * time.Millisecond
		f.Target, f.Detail = "all", fmt.Sprintf("every link delayed %v per chunk", d)
		net.Slow(d)
	case "flap":
		flips := 0
		for end := n.rec.now() + p.Duration; n.rec.now() < end && ctx.Err() == nil; flips++ {
			net.Isolate(ids[n.rng.IntN(3)], Cut)
			sleepCtx(ctx, time.Duration(200+n.rng.IntN(400))*time.Millisecond)
			net.Heal()
			sleepCtx(ctx, time.Duration(200+n.rng.IntN(400))*time.Millisecond)
		}
		f.Target, f.Detail = "random", fmt.Sprintf("%d isolations of 200-600 ms", flips)
		return
	}
	sleepCtx(ctx, p.Duration)
	net.Heal()
}

// transfer asks the cluster (through any node) to move leadership to a
// random other node, or to any up-to-date voter.
func (n *nemesis) transfer(ctx context.Context, any bool, f *Fault) {
	via := n.c.nodes[n.rng.IntN(len(n.c.nodes))]
	to := ""
	if !any {
		to = n.pick(ctx, "follower").ID
	}
	f.Target = to
	conn, err := grpc.NewClient(via.APIAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		f.Detail = err.Error()
		return
	}
	defer conn.Close()
	tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := pb.NewClusterClient(conn).TransferLeadership(tctx, &pb.TransferLeadershipRequest{ToNodeId: to})
	if err != nil {
		f.Detail = "via " + via.ID + ": " + err.Error()
		return
	}
	f.Detail = fmt.Sprintf("via %s: new leader %s", via.ID, resp.NewLeaderId)
}

// awaitSnapshotInstall waits for a healed follower to catch up and tells
// whether it needed InstallSnapshot.
func (n *nemesis) awaitSnapshotInstall(ctx context.Context, t *proccluster.Node, before int) string {
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end) && ctx.Err() == nil; {
		if snapshotInstalls(t) > before {
			return "caught up through InstallSnapshot"
		}
		sleepCtx(ctx, 200*time.Millisecond)
	}
	return "no InstallSnapshot within 10s (caught up from the Raft log)"
}

// snapshotInstalls counts the snapshots a node has restored, from its log.
func snapshotInstalls(t *proccluster.Node) int {
	return strings.Count(t.Logs(), "fsm restored from snapshot")
}
