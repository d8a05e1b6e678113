package fsm

import (
	"fmt"
	"testing"
)

// BenchmarkStateClone times State.clone, which the apply of a Compact or
// Thin entry (and every Snapshot) does on Raft's FSM goroutine: appends
// wait for it. Sizes: bench k's state (about 1.5k streams, 500
// producers, 330 runs) and a large one.
func BenchmarkStateClone(b *testing.B) {
	for _, size := range []struct{ streams, producers, runs int }{{1500, 500, 330}, {100000, 10000, 330}} {
		b.Run(fmt.Sprintf("streams=%d/producers=%d/runs=%d", size.streams, size.producers, size.runs), func(b *testing.B) {
			s := newState()
			for i := range size.streams {
				s.Streams[fmt.Sprintf("run/bench-%d/rank-%d", i, i%8)] = &StreamState{Version: uint64(i)}
			}
			for i := range size.producers {
				s.Producers[fmt.Sprintf("producer-%032d", i)] = &ProducerState{LastSeq: 9, Windows: make([]Window, DedupWindows)}
			}
			for i := range size.runs {
				s.Runs[fmt.Sprintf("run/%d", i)] = &RunInfo{Snapshots: make([]RunSnapshotRef, 16)}
			}
			s.Retention.Segments = make([]ManifestEntry, 300)
			b.ReportAllocs()
			for b.Loop() {
				_ = s.clone()
			}
		})
	}
}
