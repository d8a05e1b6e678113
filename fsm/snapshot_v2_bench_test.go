package fsm

import (
	"bytes"
	"io"
	"testing"
)

// BenchmarkSnapshotInstall measures what a follower installing a
// snapshot costs (Persist on the leader, the stream, Restore on the
// follower) for a log of about 32 MiB in 1 MiB segments: all local
// (version 1), with every sealed segment but the last tiered (version 2:
// markers and index files), and that tiered log with the objects'
// bytes inlined (version 1, what a follower received before version 2,
// read here from a local directory standing in for the store, so the
// store's latency is not in it). stream-bytes is the stream's size.
// Figures: docs/benchmarks.md. Nothing is asserted.
//
//	go test -run '^$' -bench BenchmarkSnapshotInstall -benchtime 5x ./fsm/
func BenchmarkSnapshotInstall(b *testing.B) {
	var read int64
	r := dirRemote{dir: b.TempDir(), read: &read}
	build := func(tiered bool) *Processor {
		cfg := DefaultConfig(b.TempDir())
		cfg.Segment.SegmentBytes = 1 << 20
		cfg.Segment.Remote = r
		p, err := Open(cfg)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { p.Close() })
		next := fillSegments(b, p, 1, 32)
		if tiered {
			tierAll(b, p, r, &next)
		}
		return p
	}
	local, tiered := build(false), build(true)
	run := func(b *testing.B, p *Processor, inline bool) {
		var size int64
		for b.Loop() {
			snap, err := p.Snapshot()
			if err != nil {
				b.Fatal(err)
			}
			var stream bytes.Buffer
			if err := snap.Persist(&stream); err != nil {
				b.Fatal(err)
			}
			var in io.Reader = &stream
			size = int64(stream.Len())
			if inline {
				var n int64
				if n, in, err = InlineTiered(&stream, r); err != nil {
					b.Fatal(err)
				}
				size = n
			}
			f, err := Open(func() Config { c := DefaultConfig(b.TempDir()); c.Segment.Remote = r; return c }())
			if err != nil {
				b.Fatal(err)
			}
			if err := f.Restore(in); err != nil {
				b.Fatal(err)
			}
			f.Close()
		}
		b.ReportMetric(float64(size), "stream-bytes")
	}
	b.Run("all-local-v1", func(b *testing.B) { run(b, local, false) })
	b.Run("tiered-v2", func(b *testing.B) { run(b, tiered, false) })
	b.Run("tiered-inlined-v1", func(b *testing.B) { run(b, tiered, true) })
}
