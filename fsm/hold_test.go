package fsm

import (
	"slices"
	"sync"
	"testing"
	"time"
)

// TestOnHoldSections: Config.OnHold hears of every section of compaction
// that appends can wait on: the apply of the compaction entries, a cut's
// log fsync, a rewrite's publish, and the segment log's drop and swap.
func TestOnHoldSections(t *testing.T) {
	var mu sync.Mutex
	seen := map[string]int{}
	cfg := DefaultConfig(t.TempDir())
	cfg.Segment.SegmentBytes = 64 << 10
	cfg.OnHold = func(section string, held time.Duration) {
		if held < 0 {
			t.Errorf("%s held %v", section, held)
		}
		mu.Lock()
		seen[section]++
		mu.Unlock()
	}
	p, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	entries := runEntries(t, 400)
	for i, e := range entries {
		mustApply(t, p, uint64(i+1), e)
	}
	idx := uint64(len(entries) + 1)
	// Run compaction of run/x: one rewrite per sealed segment.
	thins := planThins(t, p, p.NextOffset()-1)
	for _, c := range thins {
		mustApply(t, p, idx, c)
		idx++
	}
	waitThinned(t, p)
	// Then a retention cut of the two oldest segments.
	mustApply(t, p, idx, mustEncodeCmd(t, CmdSetRetention, &SetRetentionCommand{Prefix: "other/", MaxBytes: 1}))
	idx++
	cut := p.Retention().Segments[1].NextOffset
	mustApply(t, p, idx, mustEncodeCmd(t, CmdCompact, &CompactCommand{Cut: cut, PolicyVersion: 1}))
	waitDropped(t, p, cut)

	mu.Lock()
	defer mu.Unlock()
	if seen["apply"] != len(thins)+2 {
		t.Errorf("apply holds %d, want %d (the thins, the policy and the cut)", seen["apply"], len(thins)+2)
	}
	if seen["publish"] != len(thins) || seen["swap"] != len(thins) {
		t.Errorf("publish holds %d, swap holds %d, want %d each", seen["publish"], seen["swap"], len(thins))
	}
	// The worker fsyncs the log before each checkpoint it writes: of the
	// cut and of the rewrites (which may share one).
	if seen["worker_sync"] < 1 || seen["drop"] != 2 {
		t.Errorf("worker_sync holds %d (want at least 1), drop holds %d (want 2)", seen["worker_sync"], seen["drop"])
	}
	var names []string
	for s := range seen {
		names = append(names, s)
	}
	slices.Sort(names)
	if want := []string{"apply", "drop", "publish", "swap", "worker_sync"}; !slices.Equal(names, want) {
		t.Errorf("sections %v, want %v", names, want)
	}
}
