package jepsen

import (
	"context"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tsstore/tsstore/client"
	"github.com/tsstore/tsstore/internal/proccluster"
	pb "github.com/tsstore/tsstore/proto/tsstorev1"
)

// removedExitCode is the status of a node that applied its own removal
// (or finds its data directory tombstoned at start).
const removedExitCode = 78

// Bounds of the membership steps. Restoring the node (wipe, add, catch
// up, promote) is not cut short by the nemesis's deadline: a fault that
// removed a node always tries to bring it back before it returns.
const (
	memberCallTimeout = 20 * time.Second // one Cluster RPC, leader hand-over included
	removeWithin      = 30 * time.Second // RemoveMember retried until then
	// healthyRefusalLimit: how long a removal may be refused for lack of
	// reachable voters while every member is healthy.
	healthyRefusalLimit = 5 * time.Second
	exitWithin          = 15 * time.Second // a removed node's process exits
	restoreWithin       = 90 * time.Second // wipe, add, catch up, promote
	promoteMaxLag       = 1000             // entries behind the commit index
)

// steps records a fault's steps with their outcome and duration, for the
// Fault's detail.
type steps struct {
	n     *nemesis
	parts []string
}

// do runs one step and notes "name: outcome (took)" or "name: FAILED ...".
func (s *steps) do(name string, fn func() (string, error)) error {
	start := s.n.rec.now()
	what, err := fn()
	took := (s.n.rec.now() - start).Round(time.Millisecond)
	if err != nil {
		s.parts = append(s.parts, fmt.Sprintf("%s: FAILED %v (%v)", name, err, took))
		return err
	}
	s.parts = append(s.parts, fmt.Sprintf("%s: %s (%v)", name, what, took))
	return nil
}

func (s *steps) String() string { return strings.Join(s.parts, "; ") }

// membership removes a node from the Raft configuration and brings it
// back: RemoveMember (of the leader: it hands leadership over first); the
// node applies its own tombstone and exits with 78; restarted on its old
// data it must exit with 78 again; the cluster runs on two voters for the
// fault's duration (with "remove-kill" its leader is also killed and
// restarted meanwhile); then the node's data is wiped, it is started
// without bootstrap peers, added back as a non-voter with the same id and
// raft address (so the harness's proxies still carry its links), and
// promoted once it has caught up. A removed node that does not exit with
// 78, or runs on its old data, is a failure of the run.
func (n *nemesis) membership(ctx context.Context, p PlannedFault, f *Fault) {
	role := "follower"
	if p.Kind == "remove-leader" {
		role = "leader"
	}
	t := n.pick(ctx, role)
	f.Target = t.ID
	s := &steps{n: n}
	defer func() { f.Detail = s.String() }()
	cfg := client.DefaultConfig(n.c.apiAddrs()...)
	cfg.RequestTimeout = memberCallTimeout
	cl, err := client.New(cfg)
	if err != nil {
		s.parts = append(s.parts, err.Error())
		return
	}
	defer cl.Close()

	if err := s.do("remove "+role, func() (string, error) { return n.removeMember(ctx, cl, t) }); err != nil {
		return // still a member (or its removal unknown): nothing to restore
	}
	s.do("exit", func() (string, error) { return n.awaitRemovedExit(t, "applied its removal") })
	s.do("restart on old data", func() (string, error) {
		if err := t.Start(); err != nil {
			return "", err
		}
		return n.awaitRemovedExit(t, "refused to start")
	})
	n.backupStep(ctx, cl, s)
	if p.Kind == "remove-kill" {
		n.killDuring(ctx, s, p.Duration)
	} else {
		s.do("two voters", func() (string, error) { sleepCtx(ctx, p.Duration); return "held", nil })
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), restoreWithin)
	defer cancel()
	n.restoreMember(rctx, cl, s, t)
}

// removeMember calls RemoveMember until it succeeds or the node is no
// longer a member (NotFound: an earlier attempt removed it).
func (n *nemesis) removeMember(ctx context.Context, cl *client.Client, t *proccluster.Node) (string, error) {
	var last error
	var healthyRefusedSince time.Time
	for end := time.Now().Add(removeWithin); ; {
		var resp *pb.RemoveMemberResponse
		err := cl.Cluster(ctx, func(ctx context.Context, c pb.ClusterClient) (err error) {
			resp, err = c.RemoveMember(ctx, &pb.RemoveMemberRequest{NodeId: t.ID})
			return err
		})
		switch {
		case err == nil:
			return fmt.Sprintf("removed at raft index %d", resp.Index), nil
		case status.Code(err) == codes.NotFound && last != nil:
			return "removed (a retry found it gone: " + last.Error() + ")", nil
		case status.Code(err) == codes.NotFound:
			return "", err
		case status.Code(err) == codes.FailedPrecondition && strings.Contains(err.Error(), "reachable"):
			// A moment of refusal is legitimate (a heartbeat failed just
			// then); refused for healthyRefusalLimit while every member
			// answers and is in contact is the leader misjudging
			// reachability (the stale record fixed in server commit
			// 3169b63), a failure of the run.
			why, ok := n.allHealthy(ctx, cl)
			switch {
			case !ok:
				healthyRefusedSince = time.Time{}
			case healthyRefusedSince.IsZero():
				healthyRefusedSince = time.Now()
			case time.Since(healthyRefusedSince) > healthyRefusalLimit:
				return "", n.fail("removal of %s refused for %v (%s) although %s", t.ID, healthyRefusalLimit, status.Convert(err).Message(), why)
			}
		default:
			healthyRefusedSince = time.Time{}
		}
		last = err
		if time.Now().After(end) || ctx.Err() != nil {
			// The removal may still have happened: a removed node exits.
			if t.Exited(5 * time.Second) {
				return "removed (the call failed, the node exited: " + err.Error() + ")", nil
			}
			return "", err
		}
		sleepCtx(ctx, 300*time.Millisecond)
	}
}

// awaitRemovedExit waits for a removed node's process to exit with 78.
// Anything else is a failure of the run; a node still running is killed.
func (n *nemesis) awaitRemovedExit(t *proccluster.Node, what string) (string, error) {
	if !t.Exited(exitWithin) {
		t.Kill()
		return "", n.fail("removed node %s still running %v after it %s", t.ID, exitWithin, what)
	}
	if code := t.ExitCode(); code != removedExitCode {
		return "", n.fail("removed node %s exited with %d (want %d) after it %s", t.ID, code, removedExitCode, what)
	}
	return fmt.Sprintf("%s: exit %d", what, removedExitCode), nil
}

// fail records a violation found by the nemesis itself (checked outside
// the history) and returns it as an error.
func (n *nemesis) fail(format string, args ...any) error {
	err := fmt.Errorf(format, args...)
	n.failures = append(n.failures, err.Error())
	return err
}

// killDuring SIGKILLs the leader of the two voters left, waits d and
// restarts it: the cluster is without a quorum meanwhile.
func (n *nemesis) killDuring(ctx context.Context, s *steps, d time.Duration) {
	l := n.c.leader(ctx)
	if l == nil {
		s.parts = append(s.parts, "kill leader: no leader")
		sleepCtx(ctx, d)
		return
	}
	s.do("kill leader "+l.ID, func() (string, error) { return "SIGKILL", l.Kill() })
	s.do("two voters, one down", func() (string, error) { sleepCtx(ctx, d); return "held", nil })
	s.do("restart "+l.ID, func() (string, error) { return "restarted", l.Start() })
}

// restoreMember wipes the removed node, starts it without bootstrap
// peers, adds it as a non-voter, waits until it has caught up and
// promotes it.
func (n *nemesis) restoreMember(ctx context.Context, cl *client.Client, s *steps, t *proccluster.Node) {
	if s.do("wipe and start without bootstrap", func() (string, error) {
		if t.Running() {
			if err := t.Kill(); err != nil {
				return "", err
			}
		}
		if err := t.Wipe(); err != nil {
			return "", err
		}
		t.DropBootstrap()
		return "started " + t.DataDir, t.Start()
	}) != nil {
		return
	}
	if s.do("add non-voter", func() (string, error) { return n.addMember(ctx, cl, t) }) != nil {
		return
	}
	if s.do("catch up and promote", func() (string, error) { return n.promoteMember(ctx, cl, t) }) != nil {
		return
	}
	// Its peers still reach it through the harness's proxies (they are
	// keyed by node id, and it kept its id, raft address and overrides).
	var via []string
	for _, o := range n.c.nodes {
		if o != t {
			via = append(via, fmt.Sprintf("%s->%s %d, %s->%s %d", o.ID, t.ID, n.c.net.Open(o.ID, t.ID), t.ID, o.ID, n.c.net.Open(t.ID, o.ID)))
		}
	}
	s.parts = append(s.parts, "proxied connections: "+strings.Join(via, ", "))
}

// addMember adds t as a non-voter under its id and raft address, retrying
// until ctx ends; AlreadyExists for the same address means an earlier
// attempt did it.
func (n *nemesis) addMember(ctx context.Context, cl *client.Client, t *proccluster.Node) (string, error) {
	for {
		var resp *pb.AddMemberResponse
		err := cl.Cluster(ctx, func(ctx context.Context, c pb.ClusterClient) (err error) {
			resp, err = c.AddMember(ctx, &pb.AddMemberRequest{NodeId: t.ID, RaftAddress: t.RaftAddr})
			return err
		})
		switch {
		case err == nil:
			return fmt.Sprintf("added at raft index %d", resp.Index), nil
		case status.Code(err) == codes.AlreadyExists:
			if m, _ := n.member(ctx, cl, t.ID); m != nil && m.RaftAddress == t.RaftAddr {
				return "added (a retry found it a " + m.Suffrage + ")", nil
			}
		}
		if ctx.Err() != nil {
			return "", err
		}
		sleepCtx(ctx, 300*time.Millisecond)
	}
}

// promoteMember waits until t answers as a member, registered under its
// API address and within promoteMaxLag entries of the commit index, and
// promotes it; it returns once Members lists it as a voter.
func (n *nemesis) promoteMember(ctx context.Context, cl *client.Client, t *proccluster.Node) (string, error) {
	start, caughtUp := time.Now(), time.Duration(0)
	var last error
	for {
		m, err := n.member(ctx, cl, t.ID)
		switch {
		case err != nil:
			last = err
		case m == nil:
			last = fmt.Errorf("%s is not a member", t.ID)
		case m.Suffrage == "voter":
			return fmt.Sprintf("caught up after %v, voter after %v", caughtUp.Round(time.Millisecond), time.Since(start).Round(time.Millisecond)), nil
		case m.Error != "" || m.ApiAddress != t.APIAddr || m.Lag > promoteMaxLag:
			last = fmt.Errorf("%s not caught up: lag %d, api %q, error %q", t.ID, m.Lag, m.ApiAddress, m.Error)
		default:
			if caughtUp == 0 {
				caughtUp = time.Since(start)
			}
			last = cl.Cluster(ctx, func(ctx context.Context, c pb.ClusterClient) error {
				_, err := c.PromoteMember(ctx, &pb.PromoteMemberRequest{NodeId: t.ID, MaxLag: promoteMaxLag})
				return err
			})
			if last == nil {
				continue // confirm through Members
			}
		}
		if ctx.Err() != nil {
			return "", fmt.Errorf("not promoted: %v", last)
		}
		sleepCtx(ctx, 200*time.Millisecond)
	}
}

// member returns the Members entry of id, or nil if it is not a member.
func (n *nemesis) member(ctx context.Context, cl *client.Client, id string) (*pb.Member, error) {
	var resp *pb.MembersResponse
	err := cl.Cluster(ctx, func(ctx context.Context, c pb.ClusterClient) (err error) {
		resp, err = c.Members(ctx, &pb.MembersRequest{})
		return err
	})
	if err != nil {
		return nil, err
	}
	for _, m := range resp.Members {
		if m.Id == id {
			return m, nil
		}
	}
	return nil, nil
}

// allHealthy tells whether every member answers, is caught up and is in
// contact with the leader, and says so.
func (n *nemesis) allHealthy(ctx context.Context, cl *client.Client) (string, bool) {
	var resp *pb.MembersResponse
	err := cl.Cluster(ctx, func(ctx context.Context, c pb.ClusterClient) (err error) {
		resp, err = c.Members(ctx, &pb.MembersRequest{})
		return err
	})
	if err != nil {
		return "", false
	}
	var parts []string
	for _, m := range resp.Members {
		if m.Error != "" || m.Lag > promoteMaxLag || m.LastContactMs < 0 || m.LastContactMs > 1000 {
			return "", false
		}
		parts = append(parts, fmt.Sprintf("%s %s lag %d contact %dms", m.Id, m.Suffrage, m.Lag, m.LastContactMs))
	}
	return fmt.Sprintf("every member answers (leader %s: %s)", resp.LeaderId, strings.Join(parts, ", ")), true
}
