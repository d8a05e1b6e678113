package train

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

func TestFoldRealisticRun(t *testing.T) {
	run := genRealisticRun(t, 1)
	s := fold(t, NewState("run-1"), run.ins)

	var chain [32]byte
	for _, in := range run.ins {
		chain = Chain(chain, in)
	}
	if s.Hash != chain {
		t.Errorf("state hash %x, chain over the raw inputs %x", s.Hash, chain)
	}
	last := run.ins[len(run.ins)-1]
	if s.Events != uint64(len(run.ins)) || s.LastOffset != last.Offset || s.LastTimestamp != last.Timestamp {
		t.Errorf("position: %d events to %d at %d, want %d to %d at %d",
			s.Events, s.LastOffset, s.LastTimestamp, len(run.ins), last.Offset, last.Timestamp)
	}
	if s.Status != StatusFinished || s.StatusReason != "max epochs" || s.Generation != 2 {
		t.Errorf("status %v %q generation %d", s.Status, s.StatusReason, s.Generation)
	}
	if s.Batches != run.batches || s.Step != run.finalStep || s.LossStep != run.finalStep || s.Epoch != 2 || s.Batch != 39 {
		t.Errorf("progress: %d batches (want %d), step %d loss step %d (want %d), epoch %d batch %d",
			s.Batches, run.batches, s.Step, s.LossStep, run.finalStep, s.Epoch, s.Batch)
	}
	if len(s.Ranks) != 8 {
		t.Fatalf("%d ranks, want 8", len(s.Ranks))
	}
	for _, r := range s.Ranks {
		if r.Status != RankLive || r.LastStep != run.finalStep || r.Host != fmt.Sprintf("gpu-%d", r.Rank) {
			t.Errorf("rank %+v: want live at step %d after the restart", r, run.finalStep)
		}
	}
	if s.Hyperparameters["lr"] != 1e-4 || s.Hyperparameters["batch_size"] != 256 || s.WorldSize != 8 {
		t.Errorf("config %v world size %d", s.Hyperparameters, s.WorldSize)
	}
	if s.FirstNaN == nil || s.FirstNaN.Step != run.nanStep || s.FirstNaN.Rank != run.nanRank || !math.IsNaN(s.FirstNaN.Loss) {
		t.Errorf("FirstNaN %+v, want step %d rank %d", s.FirstNaN, run.nanStep, run.nanRank)
	}
	c := s.LastCheckpoint
	if c == nil || c.Step != run.lastCkpt || c.Generation != 2 || len(c.Files) != 8 ||
		!slices.Equal(c.Disagree, []int{run.badCkptSum}) || c.Majority != strings.Repeat("ab", 32) {
		t.Fatalf("last checkpoint %+v, want step %d of attempt 2, 8 files, rank %d disagreeing", c, run.lastCkpt, run.badCkptSum)
	}
	if s.Pending != nil {
		t.Errorf("pending %+v after every checkpoint completed", s.Pending)
	}

	// Twice gives the same bytes.
	again := fold(t, NewState("run-1"), run.ins)
	if a, b := snapshot(t, s), snapshot(t, again); !bytes.Equal(a, b) || s.Hash != again.Hash {
		t.Fatal("two folds of the same inputs differ")
	}
	// Another run differs.
	other := fold(t, NewState("run-1"), genRealisticRun(t, 2).ins)
	if other.Hash == s.Hash {
		t.Error("two different runs have the same hash")
	}
}

// TestFoldFromSnapshot: folding to a cut, snapshotting, restoring and
// folding the rest gives the bytes of folding from zero, at every cut of
// a sample.
func TestFoldFromSnapshot(t *testing.T) {
	run := genRealisticRun(t, 3)
	want := snapshot(t, fold(t, NewState("r"), run.ins))
	rng := rand.New(rand.NewPCG(3, 3))
	cuts := []int{0, 1, 2, len(run.ins) - 1, len(run.ins)}
	for range 40 {
		cuts = append(cuts, rng.IntN(len(run.ins)+1))
	}
	for _, cut := range cuts {
		mid := fold(t, NewState("r"), run.ins[:cut])
		restored, err := UnmarshalState(snapshot(t, mid))
		if err != nil {
			t.Fatalf("cut %d: %v", cut, err)
		}
		if !bytes.Equal(snapshot(t, restored), snapshot(t, mid)) || restored.Hash != mid.Hash {
			t.Fatalf("cut %d: the restored state re-encodes differently", cut)
		}
		if got := snapshot(t, fold(t, restored, run.ins[cut:])); !bytes.Equal(got, want) {
			t.Fatalf("cut %d of %d: folding on from the snapshot differs from folding from zero", cut, len(run.ins))
		}
	}
}

func TestApplyRefusesOutOfOrder(t *testing.T) {
	run := genRealisticRun(t, 4)
	s := fold(t, NewState("r"), run.ins[:10])
	before := snapshot(t, s)
	for _, in := range []Input{run.ins[9], run.ins[5], {Offset: 0, Type: "EpochStarted"}} {
		if err := s.Apply(in); !errors.Is(err, ErrOutOfOrder) {
			t.Errorf("Apply of offset %d after %d: %v, want ErrOutOfOrder", in.Offset, s.LastOffset, err)
		}
		if err := s.Skip(in); !errors.Is(err, ErrOutOfOrder) {
			t.Errorf("Skip of offset %d after %d: %v, want ErrOutOfOrder", in.Offset, s.LastOffset, err)
		}
	}
	if !bytes.Equal(snapshot(t, s), before) {
		t.Error("a refused input changed the state")
	}
	// Offset 0 is a valid first offset.
	if err := NewState("r").Apply(Input{Offset: 0, Type: "x"}); err != nil {
		t.Errorf("first input at offset 0: %v", err)
	}
}

func TestApplyRefusalsLeaveStateUnchanged(t *testing.T) {
	s := NewState("r")
	g := newRunGen(t, 5)
	g.add(NodeJoined{Rank: 0, Host: "h"})
	fold(t, s, g.ins)
	before := snapshot(t, s)
	body, _ := marshalAppend(nil, []any{0, 0, 0, 1, 1.5, 0.1, 8, "new"})
	for name, c := range map[string]struct {
		in   Input
		want error
	}{
		"newer version":    {Input{Offset: 1000, Type: "BatchCompleted", Payload: append(appendEnvelope(nil, 3), body...)}, ErrUnknownVersion},
		"malformed":        {Input{Offset: 1000, Type: "BatchCompleted", Payload: []byte{0x92, 2, 0x91, 0}}, ErrMalformed},
		"invalid rank":     {Input{Offset: 1000, Type: "NodeFailed", Payload: []byte{0x92, 1, 0x93, 0xff, 0xa0, 0xa0}}, ErrMalformed},
		"malformed fence":  {Input{Offset: 1000, Type: FenceType, Payload: []byte{0x92, 1}}, ErrMalformed},
		"nil payload":      {Input{Offset: 1000, Type: "EpochStarted"}, ErrMalformed},
		"payload of other": {Input{Offset: 1000, Type: "EpochStarted", Payload: []byte{0x92, 1, 0x92, 1, 2}}, ErrMalformed},
	} {
		err := s.Apply(c.in)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", name, err, c.want)
		}
		if c.want == ErrUnknownVersion {
			var uv *UnknownVersionError
			if !errors.As(err, &uv) || uv.Version != 3 {
				t.Errorf("%s: %v is not an *UnknownVersionError of v3", name, err)
			}
		}
		if !bytes.Equal(snapshot(t, s), before) {
			t.Fatalf("%s: the refused input changed the state", name)
		}
	}
	// The caller may skip it: hashed and counted, nothing else.
	in := Input{Offset: 1000, Timestamp: 5, Type: "BatchCompleted", Payload: []byte{0x92, 2, 0x91, 0}}
	prev := s.Hash
	if err := s.Skip(in); err != nil {
		t.Fatal(err)
	}
	if s.Skipped != 1 || s.Events != 2 || s.LastOffset != 1000 || s.Batches != 0 || s.Hash != Chain(prev, in) {
		t.Errorf("after Skip: skipped %d events %d offset %d batches %d", s.Skipped, s.Events, s.LastOffset, s.Batches)
	}
}

// TestUnknownTypesAreHashedOnly: user and system types move the position
// and the hash, nothing else.
func TestUnknownTypesAreHashedOnly(t *testing.T) {
	run := genRealisticRun(t, 6)
	s := fold(t, NewState("r"), run.ins[:50])
	for i, in := range []Input{
		{Offset: 10_000, Timestamp: 1, Type: "EvalDone", Payload: []byte("not even msgpack")},
		{Offset: 10_001, Timestamp: 2, Type: "$heartbeat"},
		{Offset: 10_002, Timestamp: 3, Type: "batchcompleted", Payload: run.ins[20].Payload},
	} {
		want := *s
		want.Events++
		want.LastOffset, want.LastTimestamp, want.Hash = in.Offset, in.Timestamp, Chain(s.Hash, in)
		wantBytes := snapshot(t, &want)
		if err := s.Apply(in); err != nil {
			t.Fatalf("input %d: %v", i, err)
		}
		if !bytes.Equal(snapshot(t, s), wantBytes) {
			t.Errorf("input %d (%s) changed more than position and hash", i, in.Type)
		}
	}
}

func TestChainFormula(t *testing.T) {
	in := Input{Offset: 0x0102030405060708, Timestamp: -2, Type: "Ab", Payload: []byte{9, 8, 7}}
	var prev [32]byte
	prev[0] = 0xee
	var b []byte
	b = append(b, prev[:]...)
	b = append(b, 1, 2, 3, 4, 5, 6, 7, 8)
	b = append(b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe)
	b = append(b, 0, 0, 0, 2, 'A', 'b', 0, 0, 0, 3, 9, 8, 7)
	if got, want := Chain(prev, in), sha256.Sum256(b); got != want {
		t.Errorf("Chain = %x, want SHA-256 of the frozen layout %x", got, want)
	}
	s := NewState("r")
	if s.Hash != ([32]byte{}) {
		t.Error("the hash of a new state is not zero")
	}
	if err := s.Apply(in); err != nil || s.Hash != Chain([32]byte{}, in) {
		t.Errorf("state hash %x after one input (%v)", s.Hash, err)
	}
}

// ckptRun drives checkpoint scenarios.
type ckptRun struct {
	t *testing.T
	s *State
	g *runGen
}

func (c *ckptRun) apply(evs ...Event) {
	c.t.Helper()
	n := len(c.g.ins)
	for _, ev := range evs {
		c.g.add(ev)
	}
	fold(c.t, c.s, c.g.ins[n:])
}

func save(step uint64, rank int, sum string) CheckpointSaved {
	return CheckpointSaved{Step: step, Rank: rank, URI: fmt.Sprintf("file:///%d/%d", step, rank), Size: 10, SHA256: sum}
}

func TestCheckpointCompletion(t *testing.T) {
	c := &ckptRun{t: t, s: NewState("r"), g: newRunGen(t, 7)}
	c.apply(NodeJoined{Rank: 0}, NodeJoined{Rank: 1}, NodeJoined{Rank: 2})
	c.apply(save(10, 1, "aa"), save(10, 0, "aa"))
	if c.s.LastCheckpoint != nil || len(c.s.Pending) != 1 || len(c.s.Pending[0].Files) != 2 {
		t.Fatalf("two of three saved: last %+v pending %+v", c.s.LastCheckpoint, c.s.Pending)
	}
	// Rank 2 fails: it no longer counts, so step 10 is complete.
	c.apply(NodeFailed{Rank: 2, Reason: "gone"})
	lc := c.s.LastCheckpoint
	if lc == nil || lc.Step != 10 || lc.Offset != c.s.LastOffset || lc.Majority != "aa" || lc.Disagree != nil ||
		lc.Files[0].Rank != 0 || lc.Files[1].Rank != 1 || c.s.Pending != nil {
		t.Fatalf("after rank 2 failed: last %+v pending %+v", lc, c.s.Pending)
	}
	// Two live ranks that disagree: a tie, the smaller hash is the majority.
	c.apply(save(20, 0, "bb"), save(20, 1, "aa"))
	if lc := c.s.LastCheckpoint; lc.Step != 20 || lc.Majority != "aa" || !slices.Equal(lc.Disagree, []int{0}) {
		t.Fatalf("tie: %+v", lc)
	}
	// A stale save for an older step of this attempt is ignored.
	c.apply(save(15, 0, "aa"))
	if c.s.Pending != nil || c.s.LastCheckpoint.Step != 20 {
		t.Fatalf("stale save: pending %+v", c.s.Pending)
	}
	// Three ranks, one differs; a rank re-saving replaces its file.
	c.apply(NodeJoined{Rank: 2}, save(30, 2, "cc"), save(30, 0, "dd"), save(30, 0, "cc"))
	if c.s.LastCheckpoint.Step != 20 {
		t.Fatal("step 30 completed without rank 1")
	}
	c.apply(save(30, 1, "ee"))
	if lc := c.s.LastCheckpoint; lc.Step != 30 || lc.Majority != "cc" || !slices.Equal(lc.Disagree, []int{1}) || lc.Files[0].SHA256 != "cc" {
		t.Fatalf("one of three differs: %+v", lc)
	}
	// Pending is bounded: the MaxPending highest steps are kept.
	c.apply(save(40, 0, "x"), save(60, 0, "x"), save(50, 0, "x"), save(70, 0, "x"), save(80, 0, "x"), save(45, 0, "x"))
	var steps []uint64
	for _, p := range c.s.Pending {
		steps = append(steps, p.Step)
	}
	if !slices.Equal(steps, []uint64{50, 60, 70, 80}) {
		t.Fatalf("pending steps %v, want the 4 highest", steps)
	}
	// The highest complete one wins and drops those below it.
	c.apply(save(70, 1, "y"), save(70, 2, "y"))
	if lc := c.s.LastCheckpoint; lc.Step != 70 || !slices.Equal(lc.Disagree, []int{0}) || len(c.s.Pending) != 1 || c.s.Pending[0].Step != 80 {
		t.Fatalf("step 70: last %+v pending %+v", lc, c.s.Pending)
	}
	// When every rank is gone nothing completes by default.
	c.apply(NodeLeft{Rank: 0}, NodeLeft{Rank: 1}, NodeFailed{Rank: 2})
	if c.s.LastCheckpoint.Step != 70 {
		t.Fatalf("step %d completed with no live rank", c.s.LastCheckpoint.Step)
	}
	if r, _ := c.s.Rank(1); r.Status != RankLeft {
		t.Errorf("rank 1 is %v, want left", r.Status)
	}
}

func TestFenceStartsAnAttempt(t *testing.T) {
	c := &ckptRun{t: t, s: NewState("r"), g: newRunGen(t, 8)}
	c.g.raw(FenceType, EncodeFence(1, "a1"))
	fold(t, c.s, c.g.ins)
	c.apply(TrainingStarted{Model: "m", WorldSize: 2}, NodeJoined{Rank: 0}, NodeJoined{Rank: 1},
		BatchCompleted{Rank: 0, Step: 5, Loss: math.Inf(1)}, save(5, 0, "a"), save(5, 1, "a"), save(9, 0, "a"),
		TrainingAborted{Step: 9, Reason: "oom"})
	if c.s.Status != StatusAborted || c.s.Generation != 1 || len(c.s.Pending) != 1 {
		t.Fatalf("before the fence: %v generation %d pending %d", c.s.Status, c.s.Generation, len(c.s.Pending))
	}
	// A repeated or older fence changes nothing but the position.
	before := *c.s
	c.g.raw(FenceType, EncodeFence(1, "again"))
	fold(t, c.s, c.g.ins[len(c.g.ins)-1:])
	if c.s.Status != StatusAborted || len(c.s.Ranks) != 2 || c.s.Events != before.Events+1 {
		t.Fatal("a repeated fence reset the attempt")
	}
	c.g.raw(FenceType, EncodeFence(2, "a2"))
	fold(t, c.s, c.g.ins[len(c.g.ins)-1:])
	s := c.s
	if s.Generation != 2 || s.Status != StatusRunning || s.StatusReason != "" || s.Ranks != nil || s.Pending != nil || s.Step != 0 || s.LossStep != 0 {
		t.Errorf("the attempt was not reset: %+v", s)
	}
	if s.MaxStep != 9 || s.Batches != 1 || s.Model != "m" || s.LastCheckpoint == nil || s.LastCheckpoint.Step != 5 || s.FirstNaN == nil || s.FirstNaN.Step != 5 {
		t.Errorf("run-wide fields were lost: %+v", s)
	}
	// The new attempt may save a step it saved before.
	c.apply(NodeJoined{Rank: 0}, save(5, 0, "b"))
	if lc := s.LastCheckpoint; lc.Generation != 2 || lc.Files[0].SHA256 != "b" {
		t.Errorf("attempt 2's checkpoint of step 5: %+v", lc)
	}
}

func TestLossFollowsTheHighestStep(t *testing.T) {
	c := &ckptRun{t: t, s: NewState("r"), g: newRunGen(t, 9)}
	nan := math.Float64frombits(0x7ff8_0000_dead_beef) // a NaN with a payload
	c.apply(BatchCompleted{Rank: 0, Step: 10, Epoch: 1, Batch: 3, Loss: 1.5, LearningRate: 0.1},
		BatchCompleted{Rank: 1, Step: 9, Loss: 7, LearningRate: 0.7}) // a straggler
	if s := c.s; s.Loss != 1.5 || s.LearningRate != 0.1 || s.LossStep != 10 || s.Epoch != 1 || s.Batch != 3 || s.Step != 10 {
		t.Errorf("a lower step moved the loss: %+v", s)
	}
	c.apply(GradientSync{Step: 11, Ranks: 2}, BatchCompleted{Rank: 1, Step: 11, Loss: nan})
	if s := c.s; s.Step != 11 || math.Float64bits(s.Loss) != math.Float64bits(math.NaN()) ||
		s.FirstNaN == nil || math.Float64bits(s.FirstNaN.Loss) != math.Float64bits(math.NaN()) {
		t.Errorf("NaN loss not recorded canonically: %+v %+v", s, s.FirstNaN)
	}
	first := *c.s.FirstNaN
	c.apply(BatchCompleted{Rank: 0, Step: 12, Loss: math.Inf(-1)})
	if got := c.s.FirstNaN; got.Step != first.Step || got.Offset != first.Offset || !math.IsNaN(got.Loss) {
		t.Error("a later Inf replaced the first NaN")
	}
}

func TestUnmarshalStateRefuses(t *testing.T) {
	s := fold(t, NewState("r"), genRealisticRun(t, 10).ins[:200])
	good := snapshot(t, s)
	other := slices.Clone(good)
	other[1] = FoldVersion + 1
	if _, err := UnmarshalState(other); !errors.Is(err, ErrFoldVersion) {
		t.Errorf("snapshot of fold version %d: %v, want ErrFoldVersion", FoldVersion+1, err)
	}
	unsorted := *s
	unsorted.Ranks = slices.Clone(s.Ranks)
	unsorted.Ranks[0], unsorted.Ranks[1] = unsorted.Ranks[1], unsorted.Ranks[0]
	for name, b := range map[string][]byte{
		"empty":          nil,
		"truncated":      good[:len(good)-1],
		"trailing":       append(slices.Clone(good), 0xc0),
		"short hash":     append([]byte{0x93, 1, 0xc4, 31}, good[4:]...),
		"not a snapshot": {0x92, 1, 0x90},
		"unsorted ranks": snapshot(t, &unsorted),
	} {
		if _, err := UnmarshalState(b); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", name, err)
		}
	}
}

// TestFoldGolden freezes the fold of a small run: a change here means the
// fold's semantics or the snapshot layout changed, and FoldVersion must
// be bumped (then run go test -update).
func TestFoldGolden(t *testing.T) {
	c := &ckptRun{t: t, s: NewState("golden"), g: &runGen{t: t, rng: rand.New(rand.NewPCG(1, 1))}}
	c.g.raw(FenceType, EncodeFence(1, "start"))
	fold(t, c.s, c.g.ins)
	c.apply(TrainingStarted{Model: "m", ConfigHash: "h", WorldSize: 2, Hyperparameters: Params{"lr": 0.5, "b": 2}},
		NodeJoined{Rank: 1, Host: "b"}, NodeJoined{Rank: 0, Host: "a"}, EpochStarted{Epoch: 0},
		BatchCompleted{Rank: 0, Step: 1, Loss: 2, LearningRate: 0.5, Samples: 4},
		BatchCompleted{Rank: 1, Step: 1, Loss: math.NaN(), LearningRate: 0.5, Samples: 4},
		GradientSync{Step: 1, Ranks: 2}, WeightUpdateApplied{Step: 1, ParamHash: "p"},
		HyperparameterChanged{Step: 1, Name: "lr", Old: 0.5, New: 0.25},
		save(1, 0, "s"), save(1, 1, "t"), save(2, 0, "s"),
		NodeLeft{Rank: 1, Host: "b", Reason: "done"}, EpochCompleted{Epoch: 0},
		TrainingFinished{Step: 1, Reason: "ok"})
	c.g.raw("User", []byte{1})
	fold(t, c.s, c.g.ins[len(c.g.ins)-1:])
	b := snapshot(t, c.s)
	got := fmt.Sprintf("hash %s\nsnapshot %s\n", hex.EncodeToString(c.s.Hash[:]), hex.EncodeToString(b))
	checkGolden(t, "testdata/fold.golden", got)
	// The snapshot carries the hash at a fixed place.
	if !bytes.Equal(b[2:4], []byte{0xc4, 32}) || !bytes.Equal(b[4:36], c.s.Hash[:]) || binary.BigEndian.Uint16(b[0:2]) != 0x9301 {
		t.Errorf("snapshot head %x", b[:36])
	}
}

func TestClone(t *testing.T) {
	run := genRealisticRun(t, 11)
	s := fold(t, NewState("r"), run.ins[:300])
	before := snapshot(t, s)
	c := s.Clone()
	fold(t, c, run.ins[300:])
	if !bytes.Equal(snapshot(t, s), before) {
		t.Error("folding a clone changed the original")
	}
	if c.Hash == s.Hash || c.Events != uint64(len(run.ins)) {
		t.Errorf("the clone did not fold on: %d events", c.Events)
	}
}
