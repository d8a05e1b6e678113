package record

import (
	"bytes"
	"testing"
)

const (
	benchRecords = 100
	benchPayload = 256
)

func benchRecord() Record {
	return Record{StreamVersion: 12, Stream: []byte("orders-12345"), Type: []byte("OrderPlaced"),
		ProducerID: []byte("producer-1"), ProducerSeq: 99, Payload: bytes.Repeat([]byte("x"), benchPayload)}
}

// BenchmarkBuilder encodes batches of 100 records with 256-byte payloads.
func BenchmarkBuilder(b *testing.B) {
	r := benchRecord()
	var bl Builder
	var size int
	for b.Loop() {
		bl.Reset(0, 1, 1, 0)
		for range benchRecords {
			if err := bl.Add(&r); err != nil {
				b.Fatal(err)
			}
		}
		out, err := bl.Finish()
		if err != nil {
			b.Fatal(err)
		}
		size = len(out)
	}
	b.SetBytes(int64(size))
	b.ReportMetric(float64(b.N*benchRecords)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkRecordIter verifies and decodes batches of 100 records.
func BenchmarkRecordIter(b *testing.B) {
	r := benchRecord()
	var bl Builder
	bl.Reset(0, 1, 1, 0)
	for range benchRecords {
		bl.Add(&r)
	}
	batch, _ := bl.Finish()
	b.SetBytes(int64(len(batch)))
	var rec Record
	for b.Loop() {
		if _, err := Verify(batch); err != nil {
			b.Fatal(err)
		}
		it := batch.Records()
		for it.Next(&rec) {
		}
		if it.Err() != nil {
			b.Fatal(it.Err())
		}
	}
	b.ReportMetric(float64(b.N*benchRecords)/b.Elapsed().Seconds(), "events/s")
}
