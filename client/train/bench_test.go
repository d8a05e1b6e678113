package train

import "testing"

// BenchmarkApplyBatchCompleted folds one BatchCompleted per op: strict
// decode, hash chain and fold.
func BenchmarkApplyBatchCompleted(b *testing.B) {
	ins := make([]Input, 1024)
	for i := range ins {
		_, p, err := Encode(BatchCompleted{Rank: i % 8, Epoch: 1, Batch: uint64(i / 8), Step: uint64(1000 + i/8),
			Loss: 2.25, LearningRate: 3e-4, Samples: 32})
		if err != nil {
			b.Fatal(err)
		}
		ins[i] = Input{Offset: uint64(i), Timestamp: int64(i) * 1000, Type: "BatchCompleted", Payload: p}
	}
	s := NewState("bench")
	for r := range 8 {
		s.rank(r)
	}
	b.SetBytes(int64(len(ins[0].Payload)))
	b.ReportAllocs()
	var base uint64
	for i := 0; b.Loop(); i++ {
		in := ins[i%len(ins)]
		if i > 0 && i%len(ins) == 0 {
			base += uint64(len(ins))
		}
		in.Offset += base
		if err := s.Apply(in); err != nil {
			b.Fatal(err)
		}
	}
}
