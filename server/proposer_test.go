package server

import (
	"testing"
	"time"

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

// The in-flight byte window: entries wait while it is full, an entry
// larger than the window goes when nothing else is in flight, and a
// waiter gives up when the node shuts down.
func TestInflightBytesWindow(t *testing.T) {
	b := &inflightBytes{max: 100, freed: make(chan struct{}, 1)}
	never := make(chan struct{})
	if !b.acquire(250, never) {
		t.Fatal("an entry larger than the window must go alone")
	}
	got := make(chan bool)
	go func() { got <- b.acquire(10, never) }()
	select {
	case <-got:
		t.Fatal("acquired beside an entry that fills the window")
	case <-time.After(20 * time.Millisecond):
	}
	b.release(250)
	if !<-got {
		t.Fatal("acquire after the release failed")
	}
	if !b.acquire(90, never) {
		t.Fatal("90 bytes beside 10 must fit a window of 100")
	}
	if h := b.held.Load(); h != 100 {
		t.Fatalf("held %d, want 100", h)
	}
	shutdown := make(chan struct{})
	go func() { got <- b.acquire(1, shutdown) }()
	close(shutdown)
	if <-got {
		t.Fatal("acquire on a full window returned true at shutdown")
	}
	if h := b.held.Load(); h != 100 {
		t.Fatalf("a refused acquire counted its bytes: held %d", h)
	}
}
