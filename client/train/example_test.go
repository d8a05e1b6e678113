package train_test

import (
	"fmt"
	"math"

	"github.com/tsstore/tsstore/client/train"
)

// A two-rank run whose loss turns NaN at step 900: encode its events,
// fold them, then fold again to the run as it was 300 steps before the
// first NaN.
func Example() {
	var log []train.Input // what a replay of the run's stream yields
	offset := uint64(10)
	write := func(ev train.Event) {
		typ, payload, err := train.Encode(ev)
		if err != nil {
			panic(err)
		}
		log = append(log, train.Input{Offset: offset, Timestamp: int64(offset) * 1e6, Type: typ, Payload: payload})
		offset += 3 // other streams' events sit in between
	}
	log = append(log, train.Input{Offset: 1, Type: train.FenceType, Payload: train.EncodeFence(1, "attempt 1")})
	write(train.TrainingStarted{Model: "tiny", WorldSize: 2, Hyperparameters: train.Params{"lr": 0.01}})
	write(train.NodeJoined{Rank: 0, Host: "gpu-0"})
	write(train.NodeJoined{Rank: 1, Host: "gpu-1"})
	for step := uint64(1); step <= 1000; step++ {
		for rank := range 2 {
			loss := 10 / float64(step)
			if step >= 900 {
				loss = math.NaN()
			}
			write(train.BatchCompleted{Rank: rank, Step: step, Batch: step, Loss: loss, LearningRate: 0.01, Samples: 64})
		}
		if step%250 == 0 {
			write(train.CheckpointSaved{Step: step, Rank: 0, URI: fmt.Sprintf("s3://tiny/%d", step), SHA256: "aa"})
			write(train.CheckpointSaved{Step: step, Rank: 1, URI: fmt.Sprintf("s3://tiny/%d", step), SHA256: "aa"})
		}
	}
	write(train.TrainingAborted{Step: 1000, Reason: "loss is NaN"})

	s := train.NewState("tiny-1")
	for _, in := range log {
		if err := s.Apply(in); err != nil {
			panic(err)
		}
	}
	fmt.Printf("%v at step %d after %d events, %d batches\n", s.Status, s.Step, s.Events, s.Batches)
	fmt.Printf("first NaN at step %d (rank %d), last checkpoint at step %d\n",
		s.FirstNaN.Step, s.FirstNaN.Rank, s.LastCheckpoint.Step)
	fmt.Printf("hash %x\n", s.Hash[:8])

	target, _ := s.StepsBeforeFirstNaN(300)
	past := train.NewState("tiny-1")
	for _, in := range log {
		if beyond, err := target.Beyond(past, in); err != nil || beyond {
			break
		}
		if err := past.Apply(in); err != nil {
			panic(err)
		}
	}
	fmt.Printf("at %v: %v, loss %.4f, last checkpoint at step %d\n",
		target, past.Status, past.Loss, past.LastCheckpoint.Step)
	// Output:
	// aborted at step 1000 after 2013 events, 2000 batches
	// first NaN at step 900 (rank 0), last checkpoint at step 1000
	// hash c4dc31fd49c16912
	// at step 600: running, loss 0.0167, last checkpoint at step 500
}

// EvalDone is a user event. Version 2 added Suite; version 1 payloads
// still in the store are upcast when read.
type EvalDone struct {
	_msgpack struct{} `msgpack:",as_array"`
	Step     uint64
	Score    float64
	Suite    string
}

func (EvalDone) EventType() string     { return "EvalDone" }
func (EvalDone) SchemaVersion() uint16 { return 2 }

// evalDoneV1 is version 1 as it was written, kept as history.
type evalDoneV1 struct {
	_msgpack struct{} `msgpack:",as_array"`
	Step     uint64
	Score    float64
}

func (evalDoneV1) EventType() string     { return "EvalDone" }
func (evalDoneV1) SchemaVersion() uint16 { return 1 }

func ExampleRegister() {
	r := train.NewRegistry()
	err := train.Register(r, train.Upcast(1, func(v evalDoneV1) (EvalDone, error) {
		return EvalDone{Step: v.Step, Score: v.Score, Suite: "default"}, nil
	}))
	if err != nil {
		panic(err)
	}
	typ, old, _ := train.Encode(evalDoneV1{Step: 100, Score: 0.75}) // an old writer
	ev, err := r.Decode(typ, old)
	if err != nil {
		panic(err)
	}
	e := ev.(EvalDone)
	fmt.Printf("%s v1 payload % x\n", typ, old)
	fmt.Printf("decodes as v2: step %d, score %v, suite %q\n", e.Step, e.Score, e.Suite)
	// Output:
	// EvalDone v1 payload 92 01 92 64 cb 3f e8 00 00 00 00 00 00
	// decodes as v2: step 100, score 0.75, suite "default"
}
