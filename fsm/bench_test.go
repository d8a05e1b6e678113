package fsm

import (
	"bytes"
	"fmt"
	"testing"
)

// Benchmarks of the FSM's hot path: encoding an append command into a
// Raft entry (leader), decoding it and applying it to the segment log
// (every replica). Entries have the shapes group commit produces: many
// one-event requests from concurrent waiting producers, or one large
// request from a batching producer. Events carry 256-byte payloads.

type entryShape struct {
	name           string
	requests, each int
}

var entryShapes = []entryShape{{"64x1", 64, 1}, {"1x4096", 1, 4096}}

func benchCommand(s entryShape, seq uint64) *AppendCommand {
	payload := bytes.Repeat([]byte("x"), 256)
	cmd := &AppendCommand{Timestamp: 1, Ops: make([]AppendOp, s.requests)}
	for r := range s.requests {
		o := AppendOp{ProducerID: fmt.Sprintf("bench-host-4242-%016x", r), Seq: seq}
		for range s.each {
			o.Events = append(o.Events, Event{Stream: fmt.Sprintf("run/bench-%d", r), Type: "BatchCompleted", Payload: payload})
		}
		cmd.Ops[r] = o
	}
	return cmd
}

func reportEvents(b *testing.B, perOp int) {
	b.ReportMetric(float64(b.N*perOp)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkEncodeAppend encodes one entry (the leader's proposer, once
// per entry).
func BenchmarkEncodeAppend(b *testing.B) {
	for _, s := range entryShapes {
		b.Run(s.name, func(b *testing.B) {
			cmd := benchCommand(s, 1)
			var n int
			b.ReportAllocs()
			for b.Loop() {
				data, err := Encode(CmdAppend, cmd)
				if err != nil {
					b.Fatal(err)
				}
				n = len(data)
			}
			b.SetBytes(int64(n))
			reportEvents(b, s.requests*s.each)
		})
	}
}

// BenchmarkDecodeAppend decodes one entry (every replica, once per entry).
func BenchmarkDecodeAppend(b *testing.B) {
	for _, s := range entryShapes {
		b.Run(s.name, func(b *testing.B) {
			data, err := Encode(CmdAppend, benchCommand(s, 1))
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for b.Loop() {
				var cmd AppendCommand
				if err := decodeAppend(data, &cmd); err != nil || len(cmd.Ops) != s.requests {
					b.Fatalf("decode: %v", err)
				}
			}
			reportEvents(b, s.requests*s.each)
		})
	}
}

// BenchmarkApply applies entries to a processor on disk: decode, producer
// dedup, stream versions, record batches, one segment write per entry (no
// fsync, as in production; segment rolls included).
func BenchmarkApply(b *testing.B) {
	for _, s := range entryShapes {
		b.Run(s.name, func(b *testing.B) {
			cfg := DefaultConfig(b.TempDir())
			p, err := Open(cfg)
			if err != nil {
				b.Fatal(err)
			}
			defer p.Close()
			// Encoding is not what is measured: entries are prepared in
			// rounds, each request continuing its producer's sequence.
			const round = 64
			entries := make([][]byte, 0, round)
			seq := uint64(1)
			refill := func() {
				entries = entries[:0]
				for range round {
					data, err := Encode(CmdAppend, benchCommand(s, seq))
					if err != nil {
						b.Fatal(err)
					}
					entries = append(entries, data)
					seq += uint64(s.each)
				}
			}
			index := uint64(0)
			b.SetBytes(int64(s.requests * s.each * 256))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if i%round == 0 {
					b.StopTimer()
					refill()
					b.StartTimer()
				}
				index++
				if r := p.Apply(index, entries[i%round]); r.Err != nil {
					b.Fatal(r.Err)
				}
			}
			reportEvents(b, s.requests*s.each)
		})
	}
}
