package segment

import (
	"math/rand/v2"
	"runtime"
	"testing"
)

const (
	sealedBenchSegments = 32
	sealedBenchSegBytes = 4 << 20
	sealedBenchInterval = 256 // ~16k index entries per segment
)

// BenchmarkSealedRandomRead reads one batch (ReadBatches with maxBytes 1)
// at a random offset of a log of 32 sealed 4 MiB segments of ~300-byte
// batches, with a 256-byte index interval: ~16k index entries per segment,
// as many as a 64 MiB segment has at the default 4 KiB interval. Every
// lookup goes through a sealed segment's sparse index.
//
// It also reports what reopening that log costs: heap-B is the heap Open
// retains (sparse indexes, stream directories, segment structs), measured
// as HeapInuse after a GC; open-read-B is the bytes Open reads with ReadAt.
// read-B/op is the bytes each lookup reads (log and index files).
func BenchmarkSealedRandomRead(b *testing.B) {
	dir := b.TempDir()
	o := DefaultOptions()
	o.SegmentBytes = sealedBenchSegBytes
	o.IndexIntervalBytes = sealedBenchInterval
	buildSealedLog(b, dir, o, sealedBenchSegments)

	cfs := &countingFS{FS: OSFS{}}
	o.FS = cfs
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	l := mustOpen(b, dir, o)
	runtime.GC()
	runtime.ReadMemStats(&after)
	heap := int64(after.HeapInuse) - int64(before.HeapInuse)
	openRead := cfs.read.Load()

	segs := l.Segments()
	end := segs[len(segs)-1].BaseOffset // sealed segments only
	rng := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 0, 64<<10)
	cfs.read.Store(0)
	for b.Loop() {
		from := rng.Uint64N(end)
		var err error
		var next uint64
		buf, next, err = l.ReadBatches(buf[:0], from, 1)
		if err != nil || next <= from {
			b.Fatalf("ReadBatches(%d) = next %d, %v", from, next, err)
		}
	}
	b.ReportMetric(float64(heap), "heap-B")
	b.ReportMetric(float64(openRead), "open-read-B")
	b.ReportMetric(float64(cfs.read.Load())/float64(b.N), "read-B/op")
	runtime.KeepAlive(l)
}

// buildSealedLog appends ~300-byte batches to a new log in dir until it
// has n sealed segments, then closes it.
func buildSealedLog(b *testing.B, dir string, o Options, n int) {
	b.Helper()
	l, err := Open(dir, o)
	if err != nil {
		b.Fatal(err)
	}
	m := newMaker(200)
	for len(l.Segments()) <= n {
		for range 1000 {
			if err := l.Append(m.batch(b, 1)); err != nil {
				b.Fatal(err)
			}
		}
	}
	if err := l.Close(); err != nil {
		b.Fatal(err)
	}
}
