package segment

import (
	"fmt"
	"io/fs"
	"sync/atomic"
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

// countingFS counts the bytes read through ReadAt, to show how much of the
// log a reader touches.
type countingFS struct {
	FS
	read atomic.Int64
}

func (c *countingFS) OpenFile(name string, flag int, perm fs.FileMode) (File, error) {
	f, err := c.FS.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return countingFile{File: f, n: &c.read}, nil
}

type countingFile struct {
	File
	n *atomic.Int64
}

func (f countingFile) ReadAt(p []byte, off int64) (int, error) {
	n, err := f.File.ReadAt(p, off)
	f.n.Add(int64(n))
	return n, err
}

const (
	streamBenchBatches = 200_000 // of 10 records: a 2M-event log
	streamBenchEvery   = 20      // one batch in 20 is the read stream's: 100k events
	streamBenchRecords = 10
)

// streamBenchLog builds a 2M-event log (200,000 batches of 10 records,
// 64-byte payloads, default options) in which stream "hot" has one batch in
// 20 (100k events) and the other batches belong to 1000 other streams.
func streamBenchLog(b *testing.B) (*Log, *countingFS) {
	b.Helper()
	cfs := &countingFS{FS: OSFS{}}
	o := DefaultOptions()
	o.FS = cfs
	l := mustOpen(b, b.TempDir(), o)
	var bl record.Builder
	payload := make([]byte, 64)
	versions := make(map[string]uint64)
	for i := range streamBenchBatches {
		stream := fmt.Sprintf("s-%d", i%1000)
		if i%streamBenchEvery == 0 {
			stream = "hot"
		}
		bl.Reset(l.NextOffset(), uint64(i+1), m0ts+int64(i), 0)
		for range streamBenchRecords {
			versions[stream]++
			r := record.Record{Stream: []byte(stream), StreamVersion: versions[stream], Type: []byte("Created"), Payload: payload}
			if err := bl.Add(&r); err != nil {
				b.Fatal(err)
			}
		}
		bt, err := bl.Finish()
		if err != nil {
			b.Fatal(err)
		}
		if err := l.Append(bt); err != nil {
			b.Fatal(err)
		}
	}
	if err := l.Sync(); err != nil {
		b.Fatal(err)
	}
	return l, cfs
}

// BenchmarkStreamBatches replays the 100k-event stream "hot" of the 2M-event
// log with 1 MiB reads. Compare with BenchmarkStreamLogReadBatches, which
// reads the whole log; read-bytes/op is what ReadAt returned.
func BenchmarkStreamBatches(b *testing.B) {
	l, cfs := streamBenchLog(b)
	end := l.NextOffset()
	buf := make([]byte, 0, 2<<20)
	var events, bytes int64
	cfs.read.Store(0)
	b.ResetTimer()
	for b.Loop() {
		var err error
		for from := uint64(0); from < end; {
			buf, from, err = l.StreamBatches(buf[:0], "hot", from, 1<<20)
			if err != nil {
				b.Fatal(err)
			}
			for rest := buf; len(rest) > 0; {
				h, _ := record.ParseHeader(rest)
				events += int64(h.RecordCount)
				bytes += int64(h.Size())
				rest = rest[h.Size():]
			}
		}
	}
	if events != int64(b.N)*streamBenchBatches/streamBenchEvery*streamBenchRecords {
		b.Fatalf("read %d events in %d rounds", events, b.N)
	}
	b.SetBytes(bytes / int64(b.N))
	b.ReportMetric(float64(events)/b.Elapsed().Seconds(), "events/s")
	b.ReportMetric(float64(cfs.read.Load())/float64(b.N), "read-bytes/op")
}

// BenchmarkStreamLogReadBatches reads the whole log of
// BenchmarkStreamBatches with ReadBatches and 1 MiB reads: what replaying
// one stream cost without the stream index.
func BenchmarkStreamLogReadBatches(b *testing.B) {
	l, cfs := streamBenchLog(b)
	end := l.NextOffset()
	buf := make([]byte, 0, 2<<20)
	var size int64
	for _, s := range l.Segments() {
		size += s.Size
	}
	cfs.read.Store(0)
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
	b.ReportMetric(float64(cfs.read.Load())/float64(b.N), "read-bytes/op")
}

// BenchmarkStreamIndexAppend is the CPU the stream index adds to each
// Append of BenchmarkAppend's batches (100 records over 7 streams): decode
// the records, collect the distinct streams, add one entry per stream.
// BenchmarkAppend itself is dominated by the write and too noisy to show it.
func BenchmarkStreamIndexAppend(b *testing.B) {
	m := newMaker(benchPayload)
	const pool = 1000
	batches := make([]record.Batch, pool)
	for i := range batches {
		batches[i] = m.batch(b, benchRecords)
	}
	var c streamCollector
	set := make(map[string]*liveStream)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		bt := batches[i%pool]
		streams, err := c.collect(bt)
		if err != nil {
			b.Fatal(err)
		}
		addBatch(set, 0, bt.Header(), int64(i)*int64(len(bt))%(1<<30), streams)
		if i++; i%20_000 == 0 {
			clear(set) // a segment's worth
		}
	}
	b.ReportMetric(float64(b.N*benchRecords)/b.Elapsed().Seconds(), "events/s")
}
