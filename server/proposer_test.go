package server

import (
	"testing"

	"github.com/tsstore/tsstore/fsm"
)

func TestOrderBySeqKeepsPositionsAndOtherProducers(t *testing.T) {
	mk := func(id string, seq uint64) *proposal { return &proposal{op: fsm.AppendOp{ProducerID: id, Seq: seq}} }
	props := []*proposal{mk("p", 30), mk("q", 5), mk("p", 10), mk("", 0), mk("q", 1), mk("p", 20)}
	orderBySeq(props)
	want := []struct {
		id  string
		seq uint64
	}{{"p", 10}, {"q", 1}, {"p", 20}, {"", 0}, {"q", 5}, {"p", 30}}
	for i, w := range want {
		if props[i].op.ProducerID != w.id || props[i].op.Seq != w.seq {
			t.Fatalf("position %d holds %s/%d, want %s/%d", i, props[i].op.ProducerID, props[i].op.Seq, w.id, w.seq)
		}
	}
	in := []*proposal{mk("a", 1), mk("b", 9), mk("a", 2)}
	orderBySeq(in)
	if in[0].op.Seq != 1 || in[1].op.Seq != 9 || in[2].op.Seq != 2 {
		t.Fatal("an entry already in order was changed")
	}
}
