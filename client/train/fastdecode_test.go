package train

import (
	"math"
	"math/rand/v2"
	"reflect"
	"testing"
)

// The fast paths decode exactly what the reflection decoder does, and
// hand everything else to it: random events of every size class, and
// random mutations of their bytes.
func TestFastDecodeMatchesReflection(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	u := func() uint64 {
		return []uint64{0, 1, 127, 128, 255, 256, 65535, 65536, 1 << 32, math.MaxUint64}[r.IntN(10)]
	}
	i := func() int { return []int{0, 1, 7, 127, 128, 70000, math.MaxInt32}[r.IntN(7)] }
	f := func() float64 { return []float64{0, -0.5, 1e300, math.NaN(), math.Inf(1), 3.25}[r.IntN(6)] }
	s := func() string { return string(make([]byte, []int{0, 5, 31, 32, 300}[r.IntN(5)])) }
	type pair struct {
		fast func([]byte) (Event, bool)
		ev   Event
	}
	for n := range 3000 {
		var p pair
		switch n % 3 {
		case 0:
			p = pair{fastBatchCompleted, BatchCompleted{Rank: i(), Epoch: u(), Batch: u(), Step: u(), Loss: f(), LearningRate: f(), Samples: u()}}
		case 1:
			p = pair{fastGradientSync, GradientSync{Step: u(), Ranks: i(), Bytes: u(), Micros: u()}}
		case 2:
			p = pair{fastWeightUpdateApplied, WeightUpdateApplied{Step: u(), ParamHash: s()}}
		}
		_, payload, err := Encode(p.ev)
		if err != nil {
			t.Fatal(err)
		}
		_, body, err := splitEnvelope(payload)
		if err != nil {
			t.Fatal(err)
		}
		for m := range 4 {
			b := append([]byte(nil), body...)
			if m > 0 { // mutate a byte
				b[r.IntN(len(b))] = byte(r.IntN(256))
			}
			got, ok := p.fast(b)
			want, werr := slowDecode(p.ev, b)
			if ok && (werr != nil || !sameEvent(got, want)) {
				t.Fatalf("%T body %x: fast %#v, reflection %#v %v", p.ev, b, got, want, werr)
			}
			if m == 0 && !ok {
				t.Fatalf("%T: the fast path refused Encode's own bytes %x", p.ev, b)
			}
		}
	}
}

func slowDecode(ev Event, b []byte) (Event, error) {
	switch ev.(type) {
	case BatchCompleted:
		return decodeBody[BatchCompleted](b, shapeOf[BatchCompleted]())
	case GradientSync:
		return decodeBody[GradientSync](b, shapeOf[GradientSync]())
	}
	return decodeBody[WeightUpdateApplied](b, shapeOf[WeightUpdateApplied]())
}

// sameEvent compares two decoded events, NaN equal to NaN.
func sameEvent(a, b Event) bool {
	if x, ok := a.(BatchCompleted); ok {
		y := b.(BatchCompleted)
		feq := func(p, q float64) bool { return math.Float64bits(p) == math.Float64bits(q) }
		return x.Rank == y.Rank && x.Epoch == y.Epoch && x.Batch == y.Batch && x.Step == y.Step &&
			feq(x.Loss, y.Loss) && feq(x.LearningRate, y.LearningRate) && x.Samples == y.Samples
	}
	return reflect.DeepEqual(a, b)
}
