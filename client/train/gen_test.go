package train

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

// runGen builds the inputs of a run, with gaps between offsets as other
// streams interleave.
type runGen struct {
	t   testing.TB
	rng *rand.Rand
	off uint64
	ts  int64
	ins []Input
}

func newRunGen(t testing.TB, seed uint64) *runGen {
	return &runGen{t: t, rng: rand.New(rand.NewPCG(seed, 7)), off: 100, ts: 1_700_000_000_000_000_000}
}

func (g *runGen) raw(typ string, payload []byte) {
	g.off += 1 + uint64(g.rng.IntN(4))
	g.ts += 1 + g.rng.Int64N(2_000_000)
	g.ins = append(g.ins, Input{Offset: g.off, Timestamp: g.ts, Type: typ, Payload: payload})
}

func (g *runGen) add(ev Event) {
	typ, p, err := Encode(ev)
	if err != nil {
		g.t.Fatal(err)
	}
	g.raw(typ, p)
}

// realisticRun is the expected outcome of genRealisticRun.
type realisticRun struct {
	ins        []Input
	batches    uint64
	nanStep    uint64
	nanRank    int
	lastCkpt   uint64 // step of the last complete checkpoint
	badCkptSum int    // rank whose sha256 differs at lastCkpt
	finalStep  uint64
}

// genRealisticRun: 8 ranks, 3 epochs of 40 steps. Rank 5 fails mid-epoch
// 1; the job goes on with 7 ranks until the next checkpoint completes,
// then a fence starts attempt 2 from it with 8 ranks (a step range is
// trained twice). Checkpoints every 10 steps; at the last one rank 3's
// sha256 differs. One loss is NaN. User and system events are mixed in.
func genRealisticRun(t testing.TB, seed uint64) realisticRun {
	g := newRunGen(t, seed)
	out := realisticRun{nanRank: 2, badCkptSum: 3}
	const ranks, epochs, perEpoch = 8, 3, 40
	g.raw(FenceType, EncodeFence(1, "attempt 1"))
	g.add(TrainingStarted{Model: "gpt-small", ConfigHash: "cfg1", WorldSize: ranks,
		Hyperparameters: Params{"lr": 3e-4, "batch_size": 256, "dropout": 0.1}})
	join := func() map[int]bool {
		live := map[int]bool{}
		for r := range ranks {
			g.add(NodeJoined{Rank: r, Host: fmt.Sprintf("gpu-%d", r)})
			live[r] = true
		}
		return live
	}
	live := join()
	order := func() []int { // live ranks in a random order
		var rs []int
		for r := range ranks {
			if live[r] {
				rs = append(rs, r)
			}
		}
		g.rng.Shuffle(len(rs), func(i, j int) { rs[i], rs[j] = rs[j], rs[i] })
		return rs
	}
	step, failed, restarted := uint64(0), false, false
	for epoch := uint64(0); epoch < epochs; epoch++ {
		g.add(EpochStarted{Epoch: epoch})
		for batch := uint64(0); batch < perEpoch; batch++ {
			step++
			for _, r := range order() {
				loss := 4*math.Exp(-float64(step)/60) + 0.05*g.rng.Float64()
				if epoch == 2 && batch == 30 && r == out.nanRank {
					loss, out.nanStep = math.NaN(), step
				}
				g.add(BatchCompleted{Rank: r, Epoch: epoch, Batch: batch, Step: step, Loss: loss,
					LearningRate: 3e-4, Samples: 32})
				out.batches++
				if g.rng.IntN(10) == 0 {
					g.raw("EvalDone", []byte{0x92, 0x01, 0x90}) // a user type the fold ignores
				}
			}
			if epoch == 1 && batch == 20 && !failed {
				g.add(NodeFailed{Rank: 5, Host: "gpu-5", Reason: "XID 79"})
				delete(live, 5)
				failed = true
			}
			g.add(GradientSync{Step: step, Ranks: len(live), Bytes: 1 << 28, Micros: uint64(9000 + g.rng.IntN(2000))})
			g.add(WeightUpdateApplied{Step: step, ParamHash: fmt.Sprintf("p%d", step)})
			if step == 50 {
				g.add(HyperparameterChanged{Step: step, Name: "lr", Old: 3e-4, New: 1e-4})
			}
			if g.rng.IntN(15) == 0 {
				g.raw("$heartbeat", nil) // a system type the fold ignores
			}
			if step%10 == 0 {
				last := epoch == epochs-1 && batch == perEpoch-1
				for _, r := range order() {
					sum := strings.Repeat("ab", 32)
					if last && r == out.badCkptSum {
						sum = strings.Repeat("cd", 32)
					}
					g.add(CheckpointSaved{Step: step, Rank: r, URI: fmt.Sprintf("s3://ckpt/%d/%d", step, r), Size: 1 << 30, SHA256: sum})
				}
				out.lastCkpt = step
				if failed && !restarted { // restart from this checkpoint with a replacement node
					restarted = true
					g.raw(FenceType, EncodeFence(2, "replace rank 5"))
					live = join()
					step -= 10 // it resumes from the checkpoint before: 10 steps are trained again
				}
			}
		}
		g.add(EpochCompleted{Epoch: epoch})
	}
	g.add(TrainingFinished{Step: step, Reason: "max epochs"})
	out.finalStep = step
	out.ins = g.ins
	return out
}

// fold applies ins to s, failing the test on any error.
func fold(t testing.TB, s *State, ins []Input) *State {
	t.Helper()
	for _, in := range ins {
		if err := s.Apply(in); err != nil {
			t.Fatalf("Apply(%s at %d): %v", in.Type, in.Offset, err)
		}
	}
	return s
}

func snapshot(t testing.TB, s *State) []byte {
	t.Helper()
	b, err := s.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}
