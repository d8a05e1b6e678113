package server

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/tsstore/tsstore/client"
	"github.com/tsstore/tsstore/client/train"
	"github.com/tsstore/tsstore/fsm"
)

func sdk(t *testing.T, tc *testCluster) *client.Client {
	t.Helper()
	var addrs []string
	for _, n := range tc.nodes {
		if n != nil {
			addrs = append(addrs, n.APIAddr())
		}
	}
	cfg := client.DefaultConfig()
	cfg.Addrs = addrs
	c, err := client.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// appendTyped appends typed events to run through p.
func appendTyped(t *testing.T, ctx context.Context, p *client.Producer, run string, evs ...train.Event) (client.AppendResult, error) {
	t.Helper()
	var out []client.Event
	for _, e := range evs {
		ce, err := client.TrainEvent(run, e)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, ce)
	}
	return p.Append(ctx, out...)
}

// The fence and snapshot payloads the FSM writes are the ones
// client/train reads: one format, two packages.
func TestFencePayloadIsTrainsFormat(t *testing.T) {
	for _, tok := range []string{"", "tok-1"} {
		g, r, err := train.DecodeFence(fsm.EncodeFence(fsm.Fence{Generation: 9, Reason: "attempt 9", Token: tok}))
		if err != nil || g != 9 || r != "attempt 9" {
			t.Fatalf("train reads the fsm's fence (token %q) as %d %q %v", tok, g, r, err)
		}
	}
	if f, err := fsm.DecodeFence(train.EncodeFence(3, "x")); err != nil || f.Generation != 3 || f.Reason != "x" {
		t.Fatalf("fsm reads train's fence as %+v %v", f, err)
	}
	if train.FenceType != fsm.FenceType {
		t.Fatalf("fence type %q vs %q", train.FenceType, fsm.FenceType)
	}
}

// Fencing holds across a leader kill: a zombie producer of the old
// attempt is refused by the new leader too, and nothing it sent after its
// fence is in the log.
func TestRunFencingAcrossLeaderKill(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	c := sdk(t, tc)
	ctx := ctxT(t)
	const run = "resnet50-7"
	gen1, err := c.StartRun(ctx, run, "attempt 1")
	if err != nil || gen1 != 1 {
		t.Fatalf("start: %d %v", gen1, err)
	}
	zombie := c.NewProducer("rank0-attempt1")
	zombie.SetRunGeneration(gen1)
	if _, err := appendTyped(t, ctx, zombie, run, train.TrainingStarted{Model: "resnet50", WorldSize: 2}); err != nil {
		t.Fatal(err)
	}
	gen2, err := c.StartRun(ctx, run, "attempt 2")
	if err != nil || gen2 != 2 {
		t.Fatalf("restart: %d %v", gen2, err)
	}
	var fe *client.FencedError
	if _, err := appendTyped(t, ctx, zombie, run, train.EpochStarted{Epoch: 1}); !errors.As(err, &fe) || fe.Current != 2 || fe.Generation != 1 {
		t.Fatalf("zombie append after the fence: %v", err)
	}
	old := tc.leader()
	for i, n := range tc.nodes {
		if n == old {
			n.Close()
			tc.nodes[i] = nil
		}
	}
	tc.leader()
	if _, err := appendTyped(t, ctx, zombie, run, train.EpochStarted{Epoch: 2}); !errors.Is(err, client.ErrFenced) {
		t.Fatalf("zombie append on the new leader: %v", err)
	}
	live := c.NewProducer("rank0-attempt2")
	live.SetRunGeneration(gen2)
	if _, err := appendTyped(t, ctx, live, run, train.EpochStarted{Epoch: 1}); err != nil {
		t.Fatalf("live generation on the new leader: %v", err)
	}
	// A plain append (no generation) to the run is fenced as well.
	if _, err := c.Append(ctx, client.Event{Stream: run, Type: "Note", Payload: []byte("x")}); !errors.Is(err, client.ErrFenced) {
		t.Fatalf("append without generation: %v", err)
	}
	st, err := c.FoldRun(ctx, run, train.Target{})
	if err != nil {
		t.Fatal(err)
	}
	// fence 1, TrainingStarted, fence 2, EpochStarted 1: nothing of the zombie's.
	if st.Events != 4 || st.Generation != 2 || st.Epoch != 1 {
		t.Fatalf("run after the fence: %d events, generation %d, epoch %d", st.Events, st.Generation, st.Epoch)
	}
	// Every remaining node refuses the zombie on its own FSM.
	for _, n := range tc.nodes {
		if n == nil {
			continue
		}
		if r, ok := n.proc.Run(run); !ok || r.Generation != 2 {
			t.Fatalf("%s: run %+v", n.cfg.NodeID, r)
		}
	}
}

// writeRun appends a typed run: epochs x batches BatchCompleted from two
// ranks, with a checkpoint every 50 steps.
func writeRun(t *testing.T, ctx context.Context, c *client.Client, run string, gen uint64, fromStep, steps uint64) {
	t.Helper()
	p := c.NewProducer("")
	p.SetRunGeneration(gen)
	if fromStep == 1 {
		if _, err := appendTyped(t, ctx, p, run, train.TrainingStarted{Model: "m", WorldSize: 2},
			train.NodeJoined{Rank: 0, Host: "a"}, train.NodeJoined{Rank: 1, Host: "b"}); err != nil {
			t.Fatal(err)
		}
	}
	for step := fromStep; step < fromStep+steps; step++ {
		evs := []train.Event{
			train.BatchCompleted{Rank: 0, Epoch: step / 100, Batch: step % 100, Step: step, Loss: 1 / float64(step), LearningRate: 0.1, Samples: 32},
			train.BatchCompleted{Rank: 1, Epoch: step / 100, Batch: step % 100, Step: step, Loss: 1 / float64(step), LearningRate: 0.1, Samples: 32},
		}
		if step%50 == 0 {
			for r := range 2 {
				evs = append(evs, train.CheckpointSaved{Step: step, Rank: r, URI: fmt.Sprintf("s3://ck/%d/%d", step, r), Size: 1, SHA256: fmt.Sprint("h", step)})
			}
		}
		if _, err := appendTyped(t, ctx, p, run, evs...); err != nil {
			t.Fatal(err)
		}
	}
}

// The leader snapshots a run every RunSnapshotBatches BatchCompleted
// events; resume reads the newest snapshot and only the tail, and gives
// the same state and hash as a fold from zero, on every node, also after
// the snapshotting leader is gone and the new leader goes on.
func TestRunSnapshotsAndResume(t *testing.T) {
	tc := newTestCluster(t, 3, func(c *Config) { c.RunSnapshotBatches = 40 })
	c := sdk(t, tc)
	ctx := ctxT(t)
	const run = "bert-1"
	gen, err := c.StartRun(ctx, run, "")
	if err != nil {
		t.Fatal(err)
	}
	writeRun(t, ctx, c, run, gen, 1, 130) // 260 batches: snapshots at 40, 80, ..., 240
	waitSnapshots := func(want uint64) *client.RunSnapshot {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			info, err := c.RunInfo(ctx, run)
			if err != nil {
				t.Fatal(err)
			}
			if info.SnapshotsTaken >= want {
				snap, ok, err := c.RunSnapshotAt(ctx, run, train.Target{})
				if err != nil || !ok {
					t.Fatalf("newest snapshot: %v %v", ok, err)
				}
				return snap
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d snapshots after 10s, want %d", info.SnapshotsTaken, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	snap := waitSnapshots(6)
	if snap.State.Batches != 240 {
		t.Fatalf("newest snapshot after %d batches, want 240", snap.State.Batches)
	}
	check := func(what string) {
		t.Helper()
		full, err := c.FoldRun(ctx, run, train.Target{})
		if err != nil {
			t.Fatal(err)
		}
		r, err := c.ResumeRun(ctx, run)
		if err != nil {
			t.Fatal(err)
		}
		if r.Info.Snapshot == nil {
			t.Fatalf("%s: resume did not start from a snapshot", what)
		}
		if r.State.Hash != full.Hash || r.State.Events != full.Events {
			t.Fatalf("%s: resume state (hash %x, %d events) differs from the full fold (%x, %d)", what, r.State.Hash[:4], r.State.Events, full.Hash[:4], full.Events)
		}
		a, _ := r.State.MarshalBinary()
		b, _ := full.MarshalBinary()
		if string(a) != string(b) {
			t.Fatalf("%s: resumed state bytes differ from the full fold", what)
		}
		if r.Checkpoint == nil || r.NextStep != r.Checkpoint.Step+1 || r.Checkpoint.Step%50 != 0 {
			t.Fatalf("%s: resume position %+v, next %d", what, r.Checkpoint, r.NextStep)
		}
		if r.Info.Folded >= full.Events/2 {
			t.Fatalf("%s: resume folded %d of %d events: not just the tail", what, r.Info.Folded, full.Events)
		}
	}
	check("first leader")
	// Time travel: the state at step 70 is the same from a snapshot and
	// from zero.
	at := train.AtStep(70)
	fromSnap, info, err := c.RunState(ctx, run, at)
	if err != nil {
		t.Fatal(err)
	}
	zero, err := c.FoldRun(ctx, run, at)
	if err != nil {
		t.Fatal(err)
	}
	if info.Snapshot == nil || fromSnap.Hash != zero.Hash || fromSnap.MaxStep != 70 {
		t.Fatalf("state at step 70: from snapshot %v (max step %d), hashes equal %v", info.Snapshot != nil, fromSnap.MaxStep, fromSnap.Hash == zero.Hash)
	}
	// Kill the leader; the new one continues the snapshots from the index.
	old := tc.leader()
	for i, n := range tc.nodes {
		if n == old {
			n.Close()
			tc.nodes[i] = nil
		}
	}
	tc.leader()
	writeRun(t, ctx, c, run, gen, 131, 60) // 380 batches: the next snapshots at 280, 320, 360
	if snap := waitSnapshots(9); snap.State.Batches != 360 {
		t.Fatalf("newest snapshot after the leader change: %d batches, want 360", snap.State.Batches)
	}
	check("second leader")
	// The snapshot index is identical on the remaining nodes.
	var refs [][]fsm.RunSnapshotRef
	for _, n := range tc.nodes {
		if n != nil {
			if err := n.proc.WaitApplied(ctx, tc.leader().proc.AppliedIndex()); err != nil {
				t.Fatal(err)
			}
			r, _ := n.proc.Run(run)
			refs = append(refs, r.Snapshots)
		}
	}
	if fmt.Sprint(refs[0]) != fmt.Sprint(refs[1]) {
		t.Fatalf("snapshot indexes differ:\n%v\n%v", refs[0], refs[1])
	}
}

// A follower that catches up by InstallSnapshot rebuilds the run index
// (fences and snapshots) from the snapshot's segments: the same lookups
// give the same answers on it as on the leader, and it fences alike.
func TestRunIndexAfterInstallSnapshot(t *testing.T) {
	tc := newTestCluster(t, 3, func(c *Config) { c.RunSnapshotBatches = 20; c.TrailingLogs = 8 })
	c := sdk(t, tc)
	ctx := ctxT(t)
	const run = "gpt-small"
	l := tc.leader()
	fi := 0
	for i, n := range tc.nodes {
		if n != l {
			fi = i
			break
		}
	}
	f := restartNode(t, tc, fi, func() {
		gen, err := c.StartRun(ctx, run, "")
		if err != nil {
			t.Fatal(err)
		}
		writeRun(t, ctx, c, run, gen, 1, 60) // 120 batches: 6 run snapshots
		if _, err := c.StartRun(ctx, run, "attempt 2"); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			if r, _ := tc.leader().proc.Run(run); r.Taken >= 6 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("no run snapshots")
			}
			time.Sleep(20 * time.Millisecond)
		}
		snapshotLive(t, tc)
		// The Raft log after the snapshot no longer reaches back to what
		// the stopped follower has: it needs the snapshot.
		writeRun(t, ctx, c, run+"-other", 0, 1, 20)
	})
	l = tc.leader()
	if err := f.proc.WaitApplied(ctx, l.proc.AppliedIndex()); err != nil {
		t.Fatal(err)
	}
	if idx := f.raft.Stats()["last_snapshot_index"]; idx == "0" {
		t.Fatal("the follower caught up without a snapshot: the test needs InstallSnapshot")
	}
	want, _ := l.proc.Run(run)
	got, ok := f.proc.Run(run)
	if !ok || got.Generation != 2 || fmt.Sprint(got.Snapshots) != fmt.Sprint(want.Snapshots) || got.Taken != want.Taken {
		t.Fatalf("run index on the caught-up follower:\n%+v\nleader:\n%+v", got, want)
	}
	for _, step := range []uint64{10, 35, 60} {
		a, aok := l.proc.RunSnapshotAt(run, fsm.ByStep, step, 0)
		b, bok := f.proc.RunSnapshotAt(run, fsm.ByStep, step, 0)
		if a != b || aok != bok {
			t.Fatalf("snapshot at step %d: leader %+v, follower %+v", step, a, b)
		}
	}
	if r, err := f.readRunSnapshot(want.Snapshots[len(want.Snapshots)-1].Offset); err != nil || r.Run != run {
		t.Fatalf("reading the newest run snapshot on the follower: %+v %v", r, err)
	}
}

// A backup carries runs: the cluster restored from it has the same run
// index, fences the old generation, and resumes the run from a snapshot
// to the same state hash as before.
func TestRunsSurviveBackupAndRestore(t *testing.T) {
	src := newTestCluster(t, 3, func(c *Config) { c.RunSnapshotBatches = 20 })
	c := sdk(t, src)
	ctx := ctxT(t)
	const run = "vit-3"
	gen, err := c.StartRun(ctx, run, "")
	if err != nil {
		t.Fatal(err)
	}
	writeRun(t, ctx, c, run, gen, 1, 50)
	gen2, err := c.StartRun(ctx, run, "attempt 2")
	if err != nil {
		t.Fatal(err)
	}
	// 100 batches, a snapshot every 20: wait for all 5, so the index the
	// backup holds is the one compared below.
	deadline := time.Now().Add(10 * time.Second)
	for r, _ := src.leader().proc.Run(run); r.Taken < 5; r, _ = src.leader().proc.Run(run) {
		if time.Now().After(deadline) {
			t.Fatalf("%d run snapshots after 10 s, want 5", r.Taken)
		}
		time.Sleep(20 * time.Millisecond)
	}
	before, err := c.ResumeRun(ctx, run)
	if err != nil || before.Info.Snapshot == nil {
		t.Fatalf("resume before the backup: %+v %v", before, err)
	}
	want, _ := src.leader().proc.Run(run)
	f := src.follower()
	if err := f.proc.WaitApplied(ctx, src.leader().proc.AppliedIndex()); err != nil {
		t.Fatal(err)
	}
	info, data := fetchBackup(t, f)
	src.close()

	dst := restoreCluster(t, 3, info, data)
	dst.leader()
	dc := sdk(t, dst)
	got, ok := dst.leader().proc.Run(run)
	if !ok || got.Generation != gen2 || fmt.Sprint(got.Snapshots) != fmt.Sprint(want.Snapshots) {
		t.Fatalf("run index after restore:\n%+v\nbefore:\n%+v", got, want)
	}
	after, err := dc.ResumeRun(ctx, run)
	if err != nil || after.Info.Snapshot == nil || after.State.Hash != before.State.Hash {
		t.Fatalf("resume after restore: %+v %v (hash before %x)", after, err, before.State.Hash[:4])
	}
	p := dc.NewProducer("")
	p.SetRunGeneration(gen)
	if _, err := appendTyped(t, ctx, p, run, train.EpochStarted{Epoch: 9}); !errors.Is(err, client.ErrFenced) {
		t.Fatalf("generation 1 after restore: %v", err)
	}
	p.SetRunGeneration(gen2)
	if _, err := appendTyped(t, ctx, p, run, train.EpochStarted{Epoch: 9}); err != nil {
		t.Fatalf("generation 2 after restore: %v", err)
	}
}
