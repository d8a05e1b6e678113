package segment

import (
	"testing"

	"github.com/tsstore/tsstore/record"
)

const (
	benchRecords = 100 // records per batch
	benchPayload = 256 // bytes per payload
)

// BenchmarkAppend appends batches of 100 records with 256-byte payloads.
// Batches are built ahead, outside the timed loop, since encoding is the
// FSM's cost, not the log's; the loop times Verify + one write each.
func BenchmarkAppend(b *testing.B) {
	l := mustOpen(b, b.TempDir(), DefaultOptions())
	m := newMaker(benchPayload)
	const pool = 2000
	batches := make([]record.Batch, pool)
	for i := range batches {
		batches[i] = m.batch(b, benchRecords)
	}
	b.SetBytes(int64(len(batches[0])))
	b.ResetTimer()
	n := 0
	for b.Loop() {
		if n == pool {
			b.StopTimer()
			for i := range batches {
				batches[i] = m.batch(b, benchRecords)
			}
			n = 0
			b.StartTimer()
		}
		if err := l.Append(batches[n]); err != nil {
			b.Fatal(err)
		}
		n++
	}
	b.ReportMetric(float64(b.N*benchRecords)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkReadBatches replays ~1M events (10,000 batches of 100 records,
// 256-byte payloads) sequentially with 1 MiB reads, verifying every CRC.
func BenchmarkReadBatches(b *testing.B) {
	l := mustOpen(b, b.TempDir(), DefaultOptions())
	m := newMaker(benchPayload)
	var size int64
	for range 10_000 {
		bt := m.batch(b, benchRecords)
		if err := l.Append(bt); err != nil {
			b.Fatal(err)
		}
		size += int64(len(bt))
	}
	end := l.NextOffset()
	buf := make([]byte, 0, 2<<20)
	b.SetBytes(size)
	b.ResetTimer()
	for b.Loop() {
		var err error
		for from := uint64(0); from < end; {
			buf, from, err = l.ReadBatches(buf[:0], from, 1<<20)
			if err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(b.N)*float64(end)/b.Elapsed().Seconds(), "events/s")
}
