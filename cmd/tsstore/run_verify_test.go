package main

import (
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"github.com/tsstore/tsstore/client/train"
	pb "github.com/tsstore/tsstore/proto/tsstorev1"
)

// `run verify` on a healthy cluster: every node's fold from zero has the
// hash of the SDK's fold, every snapshot equals the fold at its offset;
// with a node down it exits 1 naming the node.
func TestRunVerifyCommand(t *testing.T) {
	rc := startRunCluster(t)
	rc.writeTestRun(t, "bert-7")
	full := rc.fold(t, "bert-7", train.Target{})
	code, out, errOut := rc.tsstore("run", "verify", "bert-7")
	if code != 0 || !strings.Contains(out, "OK: all 3 nodes agree (hash "+hex.EncodeToString(full.Hash[:])+"), 6 snapshots equal the fold from zero\n") {
		t.Fatalf("verify: exit %d, %q\n%s", code, errOut, out)
	}
	code, out, errOut = rc.tsstore("run", "verify", "bert-7", "--json")
	var rep verifyReport
	decodeJSON(t, out, &rep)
	if code != 0 || !rep.Agree || len(rep.Problems) != 0 || rep.TargetOffset != full.LastOffset || len(rep.Nodes) != 3 || len(rep.Snapshots) != 6 {
		t.Fatalf("verify --json: exit %d, %q\n%s", code, errOut, out)
	}
	for i, n := range rep.Nodes {
		if n.ID != []string{"n1", "n2", "n3"}[i] || !n.Agrees || n.Hash != hex.EncodeToString(full.Hash[:]) || n.Events != full.Events || n.LastOffset != full.LastOffset {
			t.Errorf("node %d: %+v", i, n)
		}
	}
	for i, s := range rep.Snapshots {
		if s.Seq != uint64(i+1) || s.Result != "equal" || s.Covers == 0 {
			t.Errorf("snapshot %d: %+v", i, s)
		}
	}
	if code, _, errOut := rc.tsstore("run", "verify", "nope"); code != 1 || !strings.Contains(errOut, `NotFound: run "nope" does not exist`) {
		t.Errorf("unknown run: exit %d, %q", code, errOut)
	}
	rc.nodes[2].Close()
	code, out, errOut = rc.tsstore("run", "verify", "bert-7", "--timeout", "5s")
	if code != 1 || !strings.Contains(errOut, `run "bert-7" does not verify: node n3 (`) ||
		!strings.Contains(out, "DIFFERENT: 1 problems\n  - node n3 (") {
		t.Fatalf("verify with n3 down: exit %d, %q\n%s", code, errOut, out)
	}
}

// judge names the node that diverges from the majority and the snapshot
// that differs from the fold from zero; without a majority it says so.
func TestRunVerifyJudge(t *testing.T) {
	fold := func(id string, n int) nodeFold {
		st := train.NewState("r")
		at := map[uint64]foldPoint{}
		for i := range n {
			in := train.Input{Offset: uint64(10 * (i + 1)), Type: "Note"}
			if i == n-1 && id == "bad" {
				in.Payload = []byte("flipped")
			}
			if err := st.Apply(in); err != nil {
				t.Fatal(err)
			}
			b, _ := st.MarshalBinary()
			at[in.Offset] = foldPoint{hash: st.Hash, state: b}
		}
		return nodeFold{ID: id, Addr: id + ":1", State: st, At: at}
	}
	good := fold("n1", 3)
	snap := func(seq, covers uint64, f nodeFold) snapCheck {
		return snapCheck{ref: &pb.RunSnapshotRef{Seq: seq, Offset: 100 + seq, Covers: covers}, hash: f.At[covers].hash, state: f.At[covers].state}
	}
	wrong := snap(2, 30, fold("bad", 3)) // the snapshot of a diverged log

	rep := judge("r", 30, []nodeFold{good, fold("n2", 3), fold("bad", 3)}, []snapCheck{snap(1, 20, good), wrong})
	if rep.Agree || len(rep.Problems) != 2 ||
		!strings.HasPrefix(rep.Problems[0], "node(s) bad diverge: hash ") || !strings.Contains(rep.Problems[0], "the majority (n1, n2) has hash ") ||
		!strings.HasPrefix(rep.Problems[1], "snapshot #2 (offset 102, covers 30) differs from the fold from zero: hash ") ||
		rep.Nodes[2].Agrees || !rep.Nodes[0].Agrees || rep.Snapshots[0].Result != "equal" || rep.Snapshots[1].Result != "differs" {
		t.Fatalf("one node and one snapshot differ: %+v", rep)
	}

	short := fold("n3", 2)
	rep = judge("r", 30, []nodeFold{good, short}, nil)
	if rep.Agree || len(rep.Problems) != 1 || !strings.HasPrefix(rep.Problems[0], "the nodes disagree with no majority: n1: hash ") ||
		!strings.Contains(rep.Problems[0], "; n3: hash ") || !strings.Contains(rep.Problems[0], ", 2 events, last offset 20") {
		t.Fatalf("no majority: %+v", rep.Problems)
	}

	down := nodeFold{ID: "n3", Addr: "n3:1", Err: errors.New("connection refused")}
	rep = judge("r", 30, []nodeFold{good, fold("n2", 3), down}, []snapCheck{{ref: &pb.RunSnapshotRef{Seq: 1, Covers: 25}, skip: "fold version 9"}, snap(3, 25, good)})
	if rep.Agree || len(rep.Problems) != 2 || rep.Problems[0] != "node n3 (n3:1): connection refused" ||
		!strings.Contains(rep.Problems[1], "it covers offset 25, which holds no event of the run") || rep.Snapshots[0].Result != "skipped" || rep.Nodes[2].Error == "" {
		t.Fatalf("a node down, a skipped snapshot, one at no event: %+v", rep)
	}

	rep = judge("r", 40, []nodeFold{good, fold("n2", 3)}, nil)
	if rep.Agree || len(rep.Problems) != 1 || rep.Problems[0] != "the folds end at offset 30, but the run's last event is at offset 40" {
		t.Fatalf("folds short of the target: %+v", rep.Problems)
	}
}
