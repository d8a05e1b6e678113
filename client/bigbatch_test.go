package client

import (
	"bytes"
	"testing"

	"github.com/tsstore/tsstore/proto/tsstorev1"
	"github.com/tsstore/tsstore/record"
)

// TestReplayReceivesBatchesLargerThanGRPCDefault reads one 6 MiB batch,
// as a log written by a batching producer holds: gRPC's default receive
// limit (4 MiB) must not apply.
func TestReplayReceivesBatchesLargerThanGRPCDefault(t *testing.T) {
	var b record.Builder
	b.Reset(0, 1, 1, 0)
	payload := bytes.Repeat([]byte("x"), 256<<10)
	for range 24 {
		if err := b.Add(&record.Record{StreamVersion: 1, Stream: []byte("s"), Type: []byte("T"), Payload: payload}); err != nil {
			t.Fatal(err)
		}
	}
	batch, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	big := append([]byte(nil), batch...)
	f := startFake(t, &fakeNode{read: func(_ int, _ *tsstorev1.ReadRequest, s tsstorev1.EventStore_ReadServer) error {
		return s.Send(&tsstorev1.ReadResponse{Batches: big, NextOffset: 24})
	}})
	c := newTestClient(t, f.addr)
	n := 0
	for ev, err := range c.Replay(testCtx(t), 0) {
		if err != nil {
			t.Fatalf("Replay of a %d-byte batch: %v", len(big), err)
		}
		if len(ev.Payload) != len(payload) {
			t.Fatalf("payload of %d bytes", len(ev.Payload))
		}
		n++
	}
	if n != 24 || len(big) < 6<<20 {
		t.Fatalf("%d events from a %d-byte batch", n, len(big))
	}
}
