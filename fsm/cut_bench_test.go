package fsm

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/tsstore/tsstore/segment"
)

// BenchmarkApplyDuringCuts measures how long appends wait while retention
// cuts are applied: entries of 64 one-event requests (256 B payloads) go
// through a real Processor with 1 MiB segments, and with "cuts" a
// CompactCommand dropping every sealed segment but the newest follows
// every 100th entry. Each op applies one entry; the reported figures are
// the append entries' apply times (p50, p99, max, in µs; the cut entries
// themselves are not counted) and, for scale, the time of one log fsync
// on this disk measured the same way.
//
//	go test -run '^$' -bench BenchmarkApplyDuringCuts -benchtime 5000x ./fsm/
//
// With "thins", every 100th entry is followed instead by the ThinCommands
// of run compaction (as the leader plans them, PlanThin) dropping the
// records of 8 of the 64 streams from the newest sealed segment, so the
// cut worker rewrites a 1 MiB segment (checkpoint, read, write, fsync,
// verify, swap) while the appends apply.
func BenchmarkApplyDuringCuts(b *testing.B) {
	for _, mode := range []string{"none", "cuts", "thins"} {
		b.Run(mode, func(b *testing.B) { benchApplyDuringCuts(b, mode) })
	}
}

func benchApplyDuringCuts(b *testing.B, mode string) {
	cuts, thins := mode == "cuts", mode == "thins"
	cfg := DefaultConfig(b.TempDir())
	cfg.Segment.SegmentBytes = 1 << 20
	p, err := Open(cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	index := uint64(1)
	set, _ := Encode(CmdSetRetention, &SetRetentionCommand{Prefix: "run/", MaxBytes: 1})
	if r := p.Apply(index, set); r.Err != nil {
		b.Fatal(r.Err)
	}
	payload := bytes.Repeat([]byte("x"), 256)
	var waits []time.Duration
	var fsyncs []time.Duration
	b.ResetTimer()
	for i := range b.N {
		cmd := &AppendCommand{Timestamp: int64(i)}
		for r := range 64 {
			cmd.Ops = append(cmd.Ops, AppendOp{Events: []Event{{Stream: fmt.Sprintf("run/%d", r), Type: "BatchCompleted", Payload: payload}}})
		}
		data, err := Encode(CmdAppend, cmd)
		if err != nil {
			b.Fatal(err)
		}
		index++
		start := time.Now()
		if r := p.Apply(index, data); r.Err != nil {
			b.Fatal(r.Err)
		}
		waits = append(waits, time.Since(start))
		if i%100 == 99 {
			start := time.Now()
			if err := p.WithLog(func(l *segment.Log) error { return l.Sync() }); err != nil {
				b.Fatal(err)
			}
			fsyncs = append(fsyncs, time.Since(start))
			if segs := p.Retention().Segments; thins && len(segs) > 0 {
				e := segs[len(segs)-1]
				for k := range 8 {
					spec := ThinSpec{BaseOffset: e.BaseOffset, Stream: fmt.Sprintf("run/%d", k), Upto: e.NextOffset - 1}
					tc, err := p.PlanThin(spec)
					if errors.Is(err, ErrNothingToThin) || errors.Is(err, ErrNotReconciled) {
						continue // thinned already, or the worker is not done with it
					}
					if err != nil {
						b.Fatal(err)
					}
					c, _ := Encode(CmdThin, &tc)
					index++
					if r := p.Apply(index, c); r.Err != nil && !errors.Is(r.Err, ErrStalePlan) {
						b.Fatal(r.Err)
					}
				}
			}
			if segs := p.Retention().Segments; cuts && len(segs) > 1 {
				c, _ := Encode(CmdCompact, &CompactCommand{Cut: segs[len(segs)-2].NextOffset, PolicyVersion: 1})
				index++
				if r := p.Apply(index, c); r.Err != nil {
					b.Fatal(r.Err)
				}
			}
		}
	}
	b.StopTimer()
	pct := func(d []time.Duration, q float64) float64 {
		if len(d) == 0 {
			return 0
		}
		s := slices.Clone(d)
		slices.Sort(s)
		return float64(s[min(len(s)-1, int(q*float64(len(s))))].Microseconds())
	}
	b.ReportMetric(pct(waits, 0.5), "p50-µs")
	b.ReportMetric(pct(waits, 0.99), "p99-µs")
	b.ReportMetric(pct(waits, 1), "max-µs")
	b.ReportMetric(pct(fsyncs, 0.5), "fsync-p50-µs")
	if cuts {
		b.ReportMetric(float64(p.FirstOffset())/float64(p.NextOffset()), "dropped-fraction")
	}
	if thins {
		b.ReportMetric(float64(p.ThinStats().Rewritten), "rewrites")
	}
}
