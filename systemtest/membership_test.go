package systemtest

import (
	"context"
	"encoding/json"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tsstore/tsstore/internal/proccluster"
)

// tsstoreCLI runs the tsstore binary against the given nodes and returns
// its combined output and error.
func tsstoreCLI(t *testing.T, nodes []*proccluster.Node, args ...string) (string, error) {
	t.Helper()
	var addrs []string
	for _, n := range nodes {
		addrs = append(addrs, n.APIAddr)
	}
	args = append(args, "--addr", strings.Join(addrs, ","), "--timeout", "30s")
	out, err := exec.Command(binary(t), args...).CombinedOutput()
	t.Logf("$ tsstore %s\n%s", strings.Join(args, " "), out)
	return string(out), err
}

func mustCLI(t *testing.T, nodes []*proccluster.Node, want string, args ...string) string {
	t.Helper()
	out, err := tsstoreCLI(t, nodes, args...)
	if err != nil || !strings.Contains(out, want) {
		t.Fatalf("tsstore %v: %v, output %q does not contain %q", args, err, out, want)
	}
	return out
}

type memberJSON struct {
	ID           string  `json:"id"`
	Suffrage     string  `json:"suffrage"`
	Leader       bool    `json:"leader"`
	ApiAddress   string  `json:"api_address"`
	AppliedIndex uint64  `json:"applied_index"`
	Lag          *uint64 `json:"lag"` // absent until known
	Error        string  `json:"error"`
}

func (m memberJSON) lag() uint64 {
	if m.Lag == nil {
		return math.MaxUint64
	}
	return *m.Lag
}

// waitMember polls `tsstore members --json` until cond holds for id.
func waitMember(t *testing.T, nodes []*proccluster.Node, id, what string, cond func(memberJSON) bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, err := exec.Command(binary(t), "members", "--json", "--addr", nodes[0].APIAddr+","+nodes[len(nodes)-1].APIAddr).Output()
		var resp struct{ Members []memberJSON }
		if err == nil && json.Unmarshal(out, &resp) == nil {
			for _, m := range resp.Members {
				if m.ID == id && cond(m) {
					return
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: member %s never %s; last answer %v\n%s", id, id, what, err, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestMembershipUnderLoad changes the membership of a real three-node
// cluster while producers append: a fourth node joins as a non-voter
// through the CLI, catches up and is promoted; a follower and then the
// leader are removed; leadership moves to the new node. The removed
// follower, restarted on its old data, refuses to start (with or without
// its marker); wiped, it joins again. A node removed while it is down is
// refused by the cluster when it comes back and stops.
// At the end every acknowledged event is present exactly once at its
// offset and the remaining replicas' logs are identical.
func TestMembershipUnderLoad(t *testing.T) {
	step := steps(t)
	c := startCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	l := startLoad(t, ctx, c.APIAddrs(), "m", 3, 0, 5)
	l.waitAcked(2000)

	n1, n2, n3 := c.Nodes[0], c.Nodes[1], c.Nodes[2]
	// A fourth node joins as a non-voter, catches up and is promoted.
	step("a fourth node joins")
	n4, err := c.AddNode()
	if err != nil {
		t.Fatal(err)
	}
	all := []*proccluster.Node{n1, n2, n3}
	mustCLI(t, all, "added n4 (raft "+n4.RaftAddr+") as a non-voter", "members", "add", n4.ID, n4.RaftAddr)
	if out, err := tsstoreCLI(t, all, "members", "add", n4.ID, n4.RaftAddr); err == nil || !strings.Contains(out, "AlreadyExists") {
		t.Fatalf("adding n4 twice: %v %q", err, out)
	}
	waitMember(t, all, "n4", "registered and caught up", func(m memberJSON) bool {
		return m.Error == "" && m.ApiAddress == n4.APIAddr && m.Suffrage == "nonvoter" && m.lag() < 1000
	})
	mustCLI(t, all, "promoted n4 to voter", "members", "promote", "n4")
	waitMember(t, all, "n4", "a voter", func(m memberJSON) bool { return m.Suffrage == "voter" })

	// Leadership is not handed to a frozen voter, and the refusal is quick.
	step("transfer to a frozen voter")
	lead := waitLeader(t, c)
	var frozen *proccluster.Node
	for _, n := range all {
		if n != lead && frozen == nil {
			frozen = n
		}
	}
	frozen.Signal(syscall.SIGSTOP)
	start := time.Now()
	out, err := tsstoreCLI(t, []*proccluster.Node{lead}, "leader", "transfer", "--to", frozen.ID)
	took := time.Since(start)
	frozen.Signal(syscall.SIGCONT)
	if err == nil || !strings.Contains(out, "FailedPrecondition") || !strings.Contains(out, "unreachable") || took > 10*time.Second {
		t.Fatalf("transfer to frozen %s: %v after %v: %q", frozen.ID, err, took, out)
	}
	l.waitAcked(l.acked() + 1000)

	// Remove a follower other than n4: it applies its tombstone and exits.
	step("remove a follower")
	leader := waitLeader(t, c)
	victim := n2
	if leader == n2 {
		victim = n3
	}
	mustCLI(t, []*proccluster.Node{n4}, "removed "+victim.ID, "members", "remove", victim.ID)
	if !victim.Exited(15 * time.Second) {
		t.Fatalf("removed %s is still running", victim.ID)
	}
	if !strings.Contains(victim.Logs(), "node removed from the cluster") {
		t.Fatalf("removed %s did not log its removal", victim.ID)
	}
	// 78 keeps systemd from restarting it (RestartPreventExitStatus).
	if code := victim.ExitCode(); code != 78 {
		t.Fatalf("removed %s exited with %d, want 78", victim.ID, code)
	}
	// Restarted on its old data, it refuses to start.
	step("restart the removed follower")
	if err := victim.Start(); err != nil {
		t.Fatal(err)
	}
	if !victim.Exited(15 * time.Second) {
		t.Fatalf("removed %s restarted on its old data and kept running", victim.ID)
	}
	if !strings.Contains(victim.Logs(), "can never rejoin") {
		t.Fatalf("refusal not explained in the log of %s", victim.ID)
	}
	if code := victim.ExitCode(); code != 78 {
		t.Fatalf("removed %s refused to start with exit %d, want 78", victim.ID, code)
	}
	// Without the marker it still refuses: it had applied its tombstone.
	step("restart it without its marker")
	if err := os.Remove(filepath.Join(victim.DataDir, "removed")); err != nil {
		t.Fatal(err)
	}
	if err := victim.Start(); err != nil {
		t.Fatal(err)
	}
	if !victim.Exited(15 * time.Second) {
		t.Fatalf("removed %s without its marker kept running", victim.ID)
	}
	if _, err := os.Stat(filepath.Join(victim.DataDir, "removed")); err != nil {
		t.Fatalf("%s did not write its marker again: %v", victim.ID, err)
	}
	l.waitAcked(l.acked() + 1000)

	// Remove the leader itself: it hands leadership over first.
	step("remove the leader")
	var remaining []*proccluster.Node
	for _, n := range []*proccluster.Node{n1, n2, n3, n4} {
		if n != victim {
			remaining = append(remaining, n)
		}
	}
	leader = waitLeader(t, c)
	if leader == n4 {
		mustCLI(t, remaining, "leader is now", "leader", "transfer")
		leader = waitLeader(t, c)
	}
	mustCLI(t, remaining, "removed "+leader.ID, "members", "remove", leader.ID)
	if !leader.Exited(15 * time.Second) {
		t.Fatalf("removed leader %s is still running", leader.ID)
	}
	var live []*proccluster.Node
	for _, n := range remaining {
		if n != leader {
			live = append(live, n)
		}
	}
	l.waitAcked(l.acked() + 1000)

	// Leadership moves to the new node; a dead node is refused at once.
	step("transfer to n4 and refusals")
	mustCLI(t, live, "leader is now n4", "leader", "transfer", "--to", "n4")
	start = time.Now()
	if out, err := tsstoreCLI(t, live, "leader", "transfer", "--to", leader.ID); err == nil || !strings.Contains(out, "NotFound") {
		t.Fatalf("transfer to the removed leader: %v %q", err, out)
	}
	if out, err := tsstoreCLI(t, live, "members", "remove", "nope"); err == nil || !strings.Contains(out, "NotFound") {
		t.Fatalf("removing an unknown node: %v %q", err, out)
	}
	if out, err := tsstoreCLI(t, live, "members", "promote", "nope"); err == nil || !strings.Contains(out, "NotFound") {
		t.Fatalf("promoting an unknown node: %v %q", err, out)
	}
	t.Logf("refusals answered in %v", time.Since(start))

	// The first removed node, wiped, joins again under its id.
	step("the wiped node rejoins")
	if err := victim.Wipe(); err != nil {
		t.Fatal(err)
	}
	victim.DropBootstrap()
	if err := victim.Start(); err != nil {
		t.Fatal(err)
	}
	mustCLI(t, live, "added "+victim.ID, "members", "add", victim.ID, victim.RaftAddr)
	waitMember(t, live, victim.ID, "registered and caught up", func(m memberJSON) bool {
		return m.Error == "" && m.ApiAddress == victim.APIAddr && m.lag() < 1000
	})
	mustCLI(t, live, "promoted "+victim.ID, "members", "promote", victim.ID)
	live = append(live, victim)
	l.waitAcked(l.acked() + 1000)

	// A node removed while it is down never hears of it from Raft. Started
	// again on its old data, it asks a peer to register, is refused by the
	// leader (the tombstone is in the replicated node table) and stops.
	step("a node removed while down")
	var down *proccluster.Node
	for _, n := range live {
		if n != n4 && n != victim {
			down = n
		}
	}
	if err := down.Kill(); err != nil {
		t.Fatal(err)
	}
	live = []*proccluster.Node{n4, victim}
	mustCLI(t, live, "removed "+down.ID, "members", "remove", down.ID)
	if err := down.Start(); err != nil {
		t.Fatal(err)
	}
	if !down.Exited(30 * time.Second) {
		t.Fatalf("%s, removed while down, kept running on its old data", down.ID)
	}
	// It hears of its removal from the leader's refusal, or, restarted
	// before the leader stopped replicating to it (hashicorp/raft sends a
	// removed server the entries up to its removal before it stops), from
	// Raft after all; either way it stops for good.
	if logs := down.Logs(); !strings.Contains(logs, "the leader refused its registration") && !strings.Contains(logs, "it applied its own removal") {
		t.Fatalf("%s stopped without being refused or applying its removal", down.ID)
	}
	if _, err := os.Stat(filepath.Join(down.DataDir, "removed")); err != nil {
		t.Fatalf("refused %s did not write its marker: %v", down.ID, err)
	}
	l.waitAcked(l.acked() + 1000)
	mustCLI(t, live, "commit index", "members")

	step("check the replicas")
	acks := l.finish()
	checkReplicas(t, live, acks)
}

// steps names the phase a long test is in; if the test fails, the name
// is logged last, after the nodes' log tails (CI shows the end of the
// output). Call it before starting the cluster.
func steps(t *testing.T) func(name string) {
	var mu sync.Mutex
	cur, at := "start", time.Now()
	t.Cleanup(func() {
		if t.Failed() {
			mu.Lock()
			defer mu.Unlock()
			t.Logf("%s failed during the step %q, begun %v before the end", t.Name(), cur, time.Since(at).Round(time.Millisecond))
		}
	})
	return func(name string) {
		mu.Lock()
		cur, at = name, time.Now()
		mu.Unlock()
	}
}
