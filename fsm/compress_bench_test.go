package fsm

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/tsstore/tsstore/client/train"
	"github.com/tsstore/tsstore/record"
	"github.com/tsstore/tsstore/segment"
)

// BenchmarkCompression measures what batch compression does to the bytes
// an event costs in the segment log and to replay speed, on typed
// training events (client/train) and on random payloads. Setup applies
// compressionEntries entries through a real Processor (group-commit
// shape: 8 ranks' requests of 16 events each per entry); the timed loop
// replays the whole log from disk and decodes every record, as a client
// replay does. Metrics: B/event (segment .log bytes per event),
// events/s of replay, and apply-ns/event (the setup's write path, which
// compresses on every replica).
//
//	go test -run '^$' -bench BenchmarkCompression -benchtime 20x ./fsm/
func BenchmarkCompression(b *testing.B) {
	for _, load := range []struct {
		name   string
		events func(r *rand.Rand, step uint64, rank int) (typ string, payload []byte)
	}{
		{"training", trainingEvent},
		{"random96", randomEvent(96)},
		{"random256", randomEvent(256)},
	} {
		for _, codec := range []struct {
			name  string
			codec byte
		}{{"none", record.CompressionNone}, {"zstd", record.CompressionZstd}} {
			b.Run(load.name+"/"+codec.name, func(b *testing.B) {
				benchCompression(b, load.events, codec.codec)
			})
		}
	}
}

const (
	compressionEntries = 1000
	compressionRanks   = 8
	compressionPerOp   = 16
)

func benchCompression(b *testing.B, gen func(*rand.Rand, uint64, int) (string, []byte), codec byte) {
	cfg := DefaultConfig(b.TempDir())
	p, err := Open(cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	r := rand.New(rand.NewPCG(7, 7))
	var events, payloadBytes int
	start := time.Now()
	for i := range compressionEntries {
		cmd := &AppendCommand{Timestamp: int64(i) * int64(time.Second), Compression: codec}
		for rank := range compressionRanks {
			o := AppendOp{ProducerID: fmt.Sprintf("trainer-%d", rank), Seq: uint64(i*compressionPerOp + 1)}
			for k := range compressionPerOp {
				typ, payload := gen(r, uint64(i*compressionPerOp+k), rank)
				o.Events = append(o.Events, Event{Stream: "run/bert-large-7", Type: typ, Payload: payload})
				payloadBytes += len(payload)
			}
			events += len(o.Events)
			cmd.Ops = append(cmd.Ops, o)
		}
		data, err := Encode(CmdAppend, cmd)
		if err != nil {
			b.Fatal(err)
		}
		if res := p.Apply(uint64(i+1), data); res.Err != nil || res.Appends[0].Err != nil {
			b.Fatalf("apply %d: %v %v", i, res.Err, res.Appends[0].Err)
		}
	}
	applyNs := float64(time.Since(start).Nanoseconds()) / float64(events)
	var logBytes int64
	if err := p.WithLog(func(l *segment.Log) error {
		if err := l.Sync(); err != nil {
			return err
		}
		for _, s := range l.Segments() {
			logBytes += s.Size
		}
		return nil
	}); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for range b.N {
		n := 0
		err := p.WithLog(func(l *segment.Log) error {
			return l.Scan(0, func(bt record.Batch) error {
				it := bt.Records()
				var rec record.Record
				for it.Next(&rec) {
					n++
				}
				return it.Err()
			})
		})
		if err != nil || n != events {
			b.Fatalf("replayed %d of %d events: %v", n, events, err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(logBytes)/float64(events), "B/event")
	b.ReportMetric(float64(payloadBytes)/float64(events), "payload-B/event")
	b.ReportMetric(float64(b.N*events)/b.Elapsed().Seconds(), "events/s")
	b.ReportMetric(applyNs, "apply-ns/event")
}

// trainingEvent is what a data-parallel trainer writes: a BatchCompleted
// per rank and step, and now and then a GradientSync, a
// WeightUpdateApplied or a CheckpointSaved.
func trainingEvent(r *rand.Rand, step uint64, rank int) (string, []byte) {
	var ev train.Event
	switch {
	case step%500 == 0 && rank == 0:
		ev = train.CheckpointSaved{Step: step, Rank: rank, URI: fmt.Sprintf("s3://ckpt/bert-large-7/step-%08d/rank-%d.pt", step, rank),
			Size: 1 << 30, SHA256: fmt.Sprintf("%064x", r.Uint64())}
	case step%16 == 15:
		ev = train.GradientSync{Step: step, Ranks: compressionRanks, Bytes: 1_340_000_000, Micros: 180_000 + uint64(r.IntN(20_000))}
	case step%16 == 14 && rank == 0:
		ev = train.WeightUpdateApplied{Step: step, ParamHash: fmt.Sprintf("%016x", r.Uint64())}
	default:
		ev = train.BatchCompleted{Rank: rank, Epoch: step / 10_000, Batch: step % 10_000, Step: step,
			Loss: 2.5*math.Exp(-float64(step)/50_000) + r.Float64()*0.05, LearningRate: 3e-4, Samples: 256}
	}
	typ, payload, err := train.Encode(ev)
	if err != nil {
		panic(err)
	}
	return typ, payload
}

// randomEvent makes payloads of n random bytes: nothing to compress.
func randomEvent(n int) func(*rand.Rand, uint64, int) (string, []byte) {
	return func(r *rand.Rand, _ uint64, _ int) (string, []byte) {
		p := make([]byte, n)
		for i := range p {
			p[i] = byte(r.Uint32())
		}
		return "Blob", p
	}
}
