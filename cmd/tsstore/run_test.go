package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/tsstore/tsstore/client"
	"github.com/tsstore/tsstore/client/train"
	"github.com/tsstore/tsstore/internal/proccluster"
	"github.com/tsstore/tsstore/server"
)

// runCluster is three in-process nodes that snapshot runs every 20
// BatchCompleted events, and an SDK client of them.
type runCluster struct {
	nodes []*server.Node
	addr  string // --addr=... of every node
	cl    *client.Client
	ctx   context.Context
}

func startRunCluster(t *testing.T) *runCluster {
	t.Helper()
	rc := &runCluster{}
	// Ports are free when picked, but another process may take one before
	// a node binds it: start again on new ports then.
	for attempt := 1; ; attempt++ {
		nodes, err := startRunNodes(t)
		if err == nil {
			rc.nodes = nodes
			break
		}
		if !strings.Contains(err.Error(), "address already in use") || attempt == 3 {
			t.Fatal(err)
		}
	}
	var addrs []string
	for _, n := range rc.nodes {
		t.Cleanup(func() { n.Close() })
		addrs = append(addrs, n.APIAddr())
	}
	rc.addr = "--addr=" + strings.Join(addrs, ",")
	cl, err := client.New(client.DefaultConfig(addrs...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	rc.cl = cl
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	rc.ctx = ctx
	// Ready when a leader is known and every node's API address is
	// registered (run verify reads them from the status).
	for {
		st, err := cl.Status(ctx)
		registered := 0
		if err == nil {
			for _, n := range st.Nodes {
				if n.ApiAddress != "" {
					registered++
				}
			}
		}
		if err == nil && st.LeaderId != "" && registered == 3 {
			return rc
		}
		if ctx.Err() != nil {
			t.Fatalf("no leader with every node registered: %v %v", st, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startRunNodes starts the three nodes, or none.
func startRunNodes(t *testing.T) ([]*server.Node, error) {
	ports, err := proccluster.FreePorts("127.0.0.1", 6)
	if err != nil {
		t.Fatal(err)
	}
	addr := func(i int) string { return fmt.Sprintf("127.0.0.1:%d", ports[i]) }
	var peers []server.Peer
	for i := range 3 {
		peers = append(peers, server.Peer{ID: fmt.Sprintf("n%d", i+1), RaftAddr: addr(2 * i)})
	}
	var nodes []*server.Node
	for i := range 3 {
		cfg := server.DefaultConfig()
		cfg.NodeID, cfg.DataDir, cfg.RaftAddr, cfg.APIAddr = peers[i].ID, t.TempDir(), addr(2*i), addr(2*i+1)
		cfg.Bootstrap = peers
		cfg.HeartbeatTimeout, cfg.ElectionTimeout, cfg.LeaderLeaseTimeout = 200*time.Millisecond, 200*time.Millisecond, 100*time.Millisecond
		cfg.MinFreeBytes = 0
		cfg.RunSnapshotBatches = 20
		n, err := server.New(cfg)
		if err != nil {
			for _, n := range nodes {
				n.Close()
			}
			return nil, err
		}
		nodes = append(nodes, n)
	}
	return nodes, nil
}

// tsstore runs the CLI against the cluster.
func (rc *runCluster) tsstore(args ...string) (code int, stdout, stderr string) {
	var out, errOut bytes.Buffer
	code = run(append(args, rc.addr), &out, &errOut)
	return code, out.String(), errOut.String()
}

func (rc *runCluster) append(t *testing.T, p *client.Producer, run string, evs ...train.Event) {
	t.Helper()
	var out []client.Event
	for _, e := range evs {
		ce, err := client.TrainEvent(run, e)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, ce)
	}
	if _, err := p.Append(rc.ctx, out...); err != nil {
		t.Fatal(err)
	}
}

// writeTestRun writes a two-rank run of 60 steps at generation 1: the loss
// turns NaN at step 50; both ranks checkpoint steps 20 and 40 (rank 1's
// step 40 file differs); only rank 0 saves step 60, which stays pending.
// It waits for the run's 6 snapshots (120 batches, one per 20).
func (rc *runCluster) writeTestRun(t *testing.T, run string) {
	t.Helper()
	gen, err := rc.cl.StartRun(rc.ctx, run, "attempt 1")
	if err != nil || gen != 1 {
		t.Fatalf("start %s: %d %v", run, gen, err)
	}
	p := rc.cl.NewProducer("")
	p.SetRunGeneration(gen)
	rc.append(t, p, run, train.TrainingStarted{Model: "bert", ConfigHash: "cfg1", WorldSize: 2, Hyperparameters: train.Params{"lr": 0.1}},
		train.NodeJoined{Rank: 0, Host: "gpu-0"}, train.NodeJoined{Rank: 1, Host: "gpu-1"})
	for step := uint64(1); step <= 60; step++ {
		loss := 1 / float64(step)
		if step >= 50 {
			loss = math.NaN()
		}
		evs := []train.Event{
			train.BatchCompleted{Rank: 0, Epoch: 1 + step/30, Batch: step % 30, Step: step, Loss: loss, LearningRate: 0.1, Samples: 32},
			train.BatchCompleted{Rank: 1, Epoch: 1 + step/30, Batch: step % 30, Step: step, Loss: loss, LearningRate: 0.1, Samples: 32},
		}
		if step%20 == 0 {
			for r := range 2 {
				if r == 1 && step == 60 {
					continue
				}
				sum := fmt.Sprintf("aa%d", step)
				if r == 1 && step == 40 {
					sum = "bb40"
				}
				evs = append(evs, train.CheckpointSaved{Step: step, Rank: r, URI: fmt.Sprintf("s3://ck/%d/rank-%d.pt", step, r), Size: 100, SHA256: sum})
			}
		}
		rc.append(t, p, run, evs...)
	}
	for {
		info, err := rc.cl.RunInfo(rc.ctx, run)
		if err != nil {
			t.Fatal(err)
		}
		if info.SnapshotsTaken >= 6 {
			return
		}
		if rc.ctx.Err() != nil {
			t.Fatalf("%d snapshots of %s, want 6", info.SnapshotsTaken, run)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// fold is the SDK's fold of run from zero to target.
func (rc *runCluster) fold(t *testing.T, run string, target train.Target) *train.State {
	t.Helper()
	st, err := rc.cl.FoldRun(rc.ctx, run, target)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func decodeJSON(t *testing.T, s string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(s), v); err != nil {
		t.Fatalf("%v in:\n%s", err, s)
	}
}

// `run start` fences the run: a new generation each time, the zombie of
// the old one is refused; a new name becomes a run at generation 1.
func TestRunStartCommand(t *testing.T) {
	rc := startRunCluster(t)
	code, out, errOut := rc.tsstore("run", "start", "gpt-1", "--reason", "attempt 1")
	if code != 0 || !strings.Contains(out, "run gpt-1: generation 1 (fence at offset ") {
		t.Fatalf("first start: exit %d, %q %q", code, out, errOut)
	}
	zombie := rc.cl.NewProducer("")
	zombie.SetRunGeneration(1)
	rc.append(t, zombie, "gpt-1", train.TrainingStarted{Model: "gpt", WorldSize: 1})
	code, out, errOut = rc.tsstore("run", "start", "--json", "gpt-1", "--reason", "attempt 2: node 3 failed")
	var js struct {
		Run         string `json:"run"`
		Generation  uint64 `json:"generation"`
		FenceOffset uint64 `json:"fence_offset"`
	}
	decodeJSON(t, out, &js)
	if code != 0 || js.Run != "gpt-1" || js.Generation != 2 || js.FenceOffset != 2 {
		t.Fatalf("second start: exit %d, %+v, %q", code, js, errOut)
	}
	ev, _ := client.TrainEvent("gpt-1", train.EpochStarted{Epoch: 1})
	var fe *client.FencedError
	if _, err := zombie.Append(rc.ctx, ev); !errors.As(err, &fe) || fe.Current != 2 || fe.Generation != 1 {
		t.Fatalf("zombie append after run start: %v", err)
	}
	st := rc.fold(t, "gpt-1", train.Target{})
	if st.Generation != 2 || st.Events != 3 {
		t.Fatalf("run after the second start: generation %d, %d events", st.Generation, st.Events)
	}
	for _, bad := range [][]string{{"run", "start"}, {"run", "start", "a", "b"}, {"run"}, {"run", "stop", "gpt-1"}} {
		if code, _, _ := rc.tsstore(bad...); code != 2 {
			t.Errorf("%q: exit %d, want 2 (usage)", bad, code)
		}
	}
	if code, _, errOut := rc.tsstore("run", "start", "bad\nname"); code != 1 || !strings.Contains(errOut, "InvalidArgument") {
		t.Errorf("invalid run name: exit %d, %q", code, errOut)
	}
}

// `run show`: the index entry, the state from the newest snapshot plus
// the tail (equal to the fold from zero), and where to resume.
func TestRunShowCommand(t *testing.T) {
	rc := startRunCluster(t)
	rc.writeTestRun(t, "bert-7")
	full := rc.fold(t, "bert-7", train.Target{})
	code, out, errOut := rc.tsstore("run", "show", "bert-7")
	for _, want := range []string{
		"run bert-7: generation 1 (fenced at offset 0, ",
		"snapshots: 6 taken, 6 indexed, newest #6 ",
		"state now (from snapshot #6 (covers offset ",
		"), folded 1 events, took ",
		"  status      running, generation 1\n",
		"  model       bert, world size 2, config cfg1, lr=0.1\n",
		"  first NaN   loss NaN at step 50 (rank 0, offset ",
		"  ranks       2 ranks: 2 live\n",
		"  checkpoint  step 40 complete (generation 1, at offset ",
		"majority sha256 aa40, disagree ranks 1\n",
		"s3://ck/40/rank-1.pt  100   bb40    DISAGREES",
		"  pending     step 60 (generation 1): 1 saved, missing ranks 1\n",
		fmt.Sprintf("  hash        %x\n", full.Hash),
		"resume at step 41, after the last complete checkpoint (step 40)\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("run show: no %q in:\n%s", want, out)
		}
	}
	if code != 0 {
		t.Fatalf("run show: exit %d, %q", code, errOut)
	}
	code, out, errOut = rc.tsstore("run", "show", "bert-7", "--json")
	var js struct {
		Run struct {
			Generation     uint64 `json:"generation"`
			Events         uint64 `json:"events"`
			SnapshotsTaken uint64 `json:"snapshots_taken"`
			Snapshots      []struct {
				Seq uint64 `json:"seq"`
			} `json:"snapshots"`
		} `json:"run"`
		State struct {
			Events         uint64 `json:"events"`
			Loss           string `json:"loss"`
			Hash           string `json:"hash"`
			Hyperparameter struct {
				LR float64 `json:"lr"`
			} `json:"hyperparameters"`
			Ranks []struct {
				Rank   int    `json:"rank"`
				Host   string `json:"host"`
				Status string `json:"status"`
			} `json:"ranks"`
			LastCheckpoint struct {
				Step     uint64 `json:"step"`
				Complete bool   `json:"complete"`
				Disagree []int  `json:"disagree"`
				Files    []struct {
					URI    string `json:"uri"`
					SHA256 string `json:"sha256"`
				} `json:"files"`
			} `json:"last_checkpoint"`
			Pending []struct {
				Step    uint64 `json:"step"`
				Missing []int  `json:"missing"`
			} `json:"pending"`
			FirstNaN struct {
				Step uint64 `json:"step"`
				Loss string `json:"loss"`
			} `json:"first_nan"`
		} `json:"state"`
		Computed struct {
			Snapshot *struct {
				Seq    uint64 `json:"seq"`
				Covers uint64 `json:"covers"`
			} `json:"snapshot"`
			Folded uint64 `json:"folded"`
		} `json:"computed"`
		Resume struct {
			CheckpointStep *uint64 `json:"checkpoint_step"`
			NextStep       uint64  `json:"next_step"`
		} `json:"resume"`
	}
	decodeJSON(t, out, &js)
	s := js.State
	if code != 0 || js.Run.Generation != 1 || js.Run.Events != full.Events || js.Run.SnapshotsTaken != 6 || len(js.Run.Snapshots) != 6 ||
		s.Events != full.Events || s.Hash != hex.EncodeToString(full.Hash[:]) || s.Loss != "NaN" || s.Hyperparameter.LR != 0.1 ||
		len(s.Ranks) != 2 || s.Ranks[1].Host != "gpu-1" || s.Ranks[1].Status != "live" ||
		s.LastCheckpoint.Step != 40 || !s.LastCheckpoint.Complete || fmt.Sprint(s.LastCheckpoint.Disagree) != "[1]" ||
		len(s.LastCheckpoint.Files) != 2 || s.LastCheckpoint.Files[1].SHA256 != "bb40" ||
		len(s.Pending) != 1 || s.Pending[0].Step != 60 || fmt.Sprint(s.Pending[0].Missing) != "[1]" ||
		s.FirstNaN.Step != 50 || s.FirstNaN.Loss != "NaN" ||
		js.Computed.Snapshot == nil || js.Computed.Snapshot.Seq != 6 || js.Computed.Folded == 0 || js.Computed.Folded >= full.Events/2 ||
		js.Resume.CheckpointStep == nil || *js.Resume.CheckpointStep != 40 || js.Resume.NextStep != 41 {
		t.Fatalf("run show --json: exit %d, %q\n%s", code, errOut, out)
	}
	code, out, errOut = rc.tsstore("run", "show", "nope")
	if code != 1 || out != "" || !strings.Contains(errOut, `NotFound: run "nope" does not exist`) {
		t.Fatalf("unknown run: exit %d, %q %q", code, out, errOut)
	}
	// A stream that was never started is not a run.
	if _, err := rc.cl.Append(rc.ctx, client.Event{Stream: "plain", Type: "Note", Payload: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	if code, _, errOut := rc.tsstore("run", "show", "plain"); code != 1 || !strings.Contains(errOut, "NotFound") {
		t.Fatalf("a plain stream: exit %d, %q", code, errOut)
	}
}

// `run state`: time travel to a step, an offset, a time, or N steps
// before the first NaN; each the same state and hash as the fold from
// zero to that point.
func TestRunStateCommand(t *testing.T) {
	rc := startRunCluster(t)
	rc.writeTestRun(t, "bert-7")
	type stateOut struct {
		Target string `json:"target"`
		State  struct {
			Events  uint64 `json:"events"`
			MaxStep uint64 `json:"max_step"`
			Loss    any    `json:"loss"`
			Hash    string `json:"hash"`
		} `json:"state"`
		Computed struct {
			Snapshot *struct {
				Seq    uint64 `json:"seq"`
				Covers uint64 `json:"covers"`
			} `json:"snapshot"`
		} `json:"computed"`
	}
	state := func(args ...string) stateOut {
		t.Helper()
		code, out, errOut := rc.tsstore(append([]string{"run", "state", "bert-7", "--json"}, args...)...)
		if code != 0 {
			t.Fatalf("run state %q: exit %d, %q", args, code, errOut)
		}
		var js stateOut
		decodeJSON(t, out, &js)
		return js
	}
	at30 := rc.fold(t, "bert-7", train.AtStep(30))
	js := state("--at-step", "30")
	if js.Target != "step 30" || js.State.MaxStep != 30 || js.State.Hash != hex.EncodeToString(at30.Hash[:]) ||
		js.State.Loss != 1.0/30 || js.Computed.Snapshot == nil {
		t.Fatalf("--at-step 30: %+v, want hash %x from a snapshot", js, at30.Hash)
	}
	// The snapshot described is the one in the index, not the state
	// folded on from it.
	info, err := rc.cl.RunInfo(rc.ctx, "bert-7")
	if err != nil {
		t.Fatal(err)
	}
	if ref := info.Snapshots[js.Computed.Snapshot.Seq-1]; ref.Seq != js.Computed.Snapshot.Seq || ref.Covers != js.Computed.Snapshot.Covers ||
		ref.Step != 30 {
		t.Fatalf("--at-step 30 from snapshot %+v; the index has %v", js.Computed.Snapshot, ref)
	}
	if js := state("--before-nan", "20"); js.Target != "step 30" || js.State.Hash != hex.EncodeToString(at30.Hash[:]) {
		t.Fatalf("--before-nan 20: %+v", js)
	}
	code, out, errOut := rc.tsstore("run", "state", "bert-7", "--before-nan", "20")
	if code != 0 || !strings.HasPrefix(out, "first NaN loss at step 50 (rank 0, offset ") || !strings.Contains(out, "20 steps before it is step 30\nrun bert-7 at step 30 (from snapshot #") ||
		!strings.Contains(out, fmt.Sprintf("  hash        %x\n", at30.Hash)) {
		t.Fatalf("--before-nan text: exit %d, %q\n%s", code, errOut, out)
	}
	atOff := rc.fold(t, "bert-7", train.AtOffset(at30.LastOffset))
	if js := state("--at-offset", fmt.Sprint(at30.LastOffset)); js.Target != fmt.Sprintf("offset %d", at30.LastOffset) ||
		js.State.Hash != hex.EncodeToString(atOff.Hash[:]) || js.State.Events != atOff.Events {
		t.Fatalf("--at-offset: %+v, want %d events", js, atOff.Events)
	}
	full := rc.fold(t, "bert-7", train.Target{})
	if js := state("--at-time", time.Now().Add(time.Hour).UTC().Format(time.RFC3339)); js.State.Hash != hex.EncodeToString(full.Hash[:]) {
		t.Fatalf("--at-time in an hour: %+v, want the whole run", js)
	}
	if js := state("--at-time", "1h"); js.State.Events != 0 || js.Computed.Snapshot != nil {
		t.Fatalf("--at-time an hour ago, before the run: %+v", js)
	}
	for _, bad := range [][]string{{}, {"--at-step", "3", "--at-offset", "4"}, {"--at-time", "-5m"}, {"--at-time", "yesterday"}} {
		if code, _, errOut := rc.tsstore(append([]string{"run", "state", "bert-7"}, bad...)...); code != 2 {
			t.Errorf("run state %q: exit %d, %q, want 2 (usage)", bad, code, errOut)
		}
	}
	if code, _, errOut := rc.tsstore("run", "state", "nope", "--at-step", "3"); code != 1 || !strings.Contains(errOut, `NotFound: run "nope"`) {
		t.Errorf("unknown run: exit %d, %q", code, errOut)
	}
	if _, err := rc.cl.StartRun(rc.ctx, "clean", ""); err != nil {
		t.Fatal(err)
	}
	if code, _, errOut := rc.tsstore("run", "state", "clean", "--before-nan", "5"); code != 1 || !strings.Contains(errOut, `run "clean" has no NaN or Inf loss`) {
		t.Errorf("--before-nan without a NaN: exit %d, %q", code, errOut)
	}
}

// `run checkpoints`: the last complete checkpoint with each rank's file
// and the ranks that disagree, and the pending ones with the missing
// ranks.
func TestRunCheckpointsCommand(t *testing.T) {
	rc := startRunCluster(t)
	rc.writeTestRun(t, "bert-7")
	code, out, errOut := rc.tsstore("run", "checkpoints", "bert-7")
	for _, want := range []string{
		"last complete checkpoint: step 40 (generation 1, completed at offset ",
		"majority sha256 aa40, disagree ranks 1\n",
		"0     s3://ck/40/rank-0.pt  100   aa40",
		"1     s3://ck/40/rank-1.pt  100   bb40    DISAGREES",
		"resume at step 41\n",
		"pending: step 60 (generation 1), 1 saved, missing ranks 1\n",
		"0     s3://ck/60/rank-0.pt  100   aa60",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in:\n%s", want, out)
		}
	}
	if code != 0 {
		t.Fatalf("exit %d, %q", code, errOut)
	}
	code, out, errOut = rc.tsstore("run", "checkpoints", "bert-7", "--json")
	var js struct {
		LastCheckpoint *checkpointJSON  `json:"last_checkpoint"`
		Pending        []checkpointJSON `json:"pending"`
		NextStep       uint64           `json:"next_step"`
		Computed       map[string]any   `json:"computed"`
	}
	decodeJSON(t, out, &js)
	c := js.LastCheckpoint
	if code != 0 || c == nil || c.Step != 40 || !c.Complete || c.Majority != "aa40" || fmt.Sprint(c.Disagree) != "[1]" || len(c.Files) != 2 ||
		c.Files[0].URI != "s3://ck/40/rank-0.pt" || c.Offset == 0 ||
		len(js.Pending) != 1 || js.Pending[0].Step != 60 || js.Pending[0].Complete || fmt.Sprint(js.Pending[0].Missing) != "[1]" ||
		len(js.Pending[0].Files) != 1 || js.NextStep != 41 || js.Computed["snapshot"] == nil {
		t.Fatalf("--json: exit %d, %q\n%s", code, errOut, out)
	}
	if code, _, errOut := rc.tsstore("run", "checkpoints", "nope"); code != 1 || !strings.Contains(errOut, `NotFound: run "nope"`) {
		t.Errorf("unknown run: exit %d, %q", code, errOut)
	}
	// A run with no checkpoint yet.
	if _, err := rc.cl.StartRun(rc.ctx, "fresh", ""); err != nil {
		t.Fatal(err)
	}
	if code, out, _ := rc.tsstore("run", "checkpoints", "fresh"); code != 0 || !strings.Contains(out, "no complete checkpoint: resume from scratch\npending: none\n") {
		t.Errorf("fresh run: exit %d\n%s", code, out)
	}
}
